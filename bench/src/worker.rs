//! The bench's hidden worker mode, `hreg-bench --worker JSON`: this
//! executable run as one child process of a section (a soak client, the
//! honest client of `--attacks`, one process of a `--burst`, a reading
//! client of section 7), with what it is to do as JSON on its command line.

use crate::{burst, honest, reads_worker, rings, soak_worker};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::process::{Command, ExitCode};

/// What a worker process is to do.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Worker {
    Soak(soak_worker::Plan),
    Honest(honest::Plan),
    Burst(burst::ClientPlan),
    Reads(reads_worker::Plan),
    RingHolder(rings::HolderPlan),
}

impl Worker {
    /// The command that runs this worker (this executable, `--worker`).
    pub fn command(&self) -> anyhow::Result<Command> {
        let mut command = Command::new(std::env::current_exe().context("this executable")?);
        command.arg("--worker").arg(serde_json::to_string(self)?);
        Ok(command)
    }

    /// Runs the worker `json` describes; its exit status.
    pub fn run(json: &str) -> ExitCode {
        let worker: Worker = match serde_json::from_str(json) {
            Ok(worker) => worker,
            Err(e) => {
                eprintln!("hreg-bench: bad worker plan: {e}");
                return ExitCode::from(2);
            }
        };
        let result = match &worker {
            Worker::Soak(plan) => soak_worker::run(plan),
            Worker::Honest(plan) => honest::run(plan),
            Worker::Burst(plan) => burst::client(plan),
            Worker::Reads(plan) => reads_worker::run(plan),
            Worker::RingHolder(plan) => rings::holder(plan),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hreg-bench worker: {e:#}");
                ExitCode::FAILURE
            }
        }
    }
}
