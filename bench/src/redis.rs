//! Section 4's client: just enough RESP over a Unix socket to SET and GET,
//! one request at a time or pipelined, without a Redis crate.

use anyhow::{bail, Context};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

pub struct Redis {
    out: Vec<u8>,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    line: Vec<u8>,
}

impl Redis {
    pub fn connect(socket: &Path) -> anyhow::Result<Redis> {
        let stream = UnixStream::connect(socket)
            .with_context(|| format!("connecting to redis at {}", socket.display()))?;
        Ok(Redis {
            out: Vec::with_capacity(64 * 1024),
            writer: stream.try_clone()?,
            reader: BufReader::with_capacity(512 * 1024, stream),
            line: Vec::new(),
        })
    }

    /// Queues `SET key value`.
    pub fn queue_set(&mut self, key: &[u8], value: &[u8]) {
        self.command(&[b"SET", key, value]);
    }

    /// Queues `GET key`.
    pub fn queue_get(&mut self, key: &[u8]) {
        self.command(&[b"GET", key]);
    }

    fn command(&mut self, parts: &[&[u8]]) {
        let out = &mut self.out;
        let _ = write!(out, "*{}\r\n", parts.len());
        for part in parts {
            let _ = write!(out, "${}\r\n", part.len());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends the queued commands and reads `n` replies, keeping the last
    /// bulk reply in `value` (cleared for other kinds).
    pub fn flush(&mut self, n: usize, value: &mut Vec<u8>) -> anyhow::Result<()> {
        self.writer.write_all(&self.out)?;
        self.out.clear();
        for _ in 0..n {
            self.reply(value)?;
        }
        Ok(())
    }

    fn reply(&mut self, value: &mut Vec<u8>) -> anyhow::Result<()> {
        self.line.clear();
        self.reader.read_until(b'\n', &mut self.line)?;
        let Some((&kind, rest)) = self.line.split_first() else {
            bail!("redis closed the connection");
        };
        let text = std::str::from_utf8(rest)?.trim_end();
        value.clear();
        match kind {
            b'+' | b':' => Ok(()),
            b'-' => bail!("redis error: {text}"),
            b'$' => {
                let len: i64 = text.parse()?;
                if len >= 0 {
                    value.resize(len as usize + 2, 0);
                    self.reader.read_exact(value)?;
                    value.truncate(len as usize);
                }
                Ok(())
            }
            _ => bail!(
                "unexpected redis reply {:?}",
                String::from_utf8_lossy(&self.line)
            ),
        }
    }
}
