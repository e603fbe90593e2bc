//! `hreg._hreg`: the native part of the Python package `hreg`, a PyO3 layer
//! over the Rust client crate `hreg`.
//!
//! It owns the Python-facing API of DESIGN.md ("The Python and Go
//! clients"): `connect`, the thread-safe `Client`, the batch op classes
//! (`Insert`, `Get`, ...), and the mapping of the Rust client's errors onto
//! the exception classes of `hreg._errors` (one per C status). It checks
//! what only Python can get wrong (handles that are not positive 64-bit
//! integers, values that are not bytes-like, buffers that are not writable)
//! and releases the GIL around every call that may wait for the daemon.
//! The protocol itself is all in the `hreg` crate.

use hreg::locks::lock;
use hreg::{Completion, Error, Handle, Limit, Op};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PySlice};
use std::path::PathBuf;
use std::sync::Mutex;

/// `hreg._errors`, where the exception classes live (plain Python, so that
/// `InvalidArgument` can also be a `ValueError`).
fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static ERRORS: GILOnceCell<Py<PyModule>> = GILOnceCell::new();
    ERRORS
        .get_or_try_init(py, || Ok(py.import("hreg._errors")?.unbind()))
        .map(|m| m.bind(py))
}

/// An instance of the exception class for `error`, its message prefixed by
/// `what` (the call and its handle). Not raised: `submit` returns these.
fn error_object<'py>(py: Python<'py>, error: &Error, what: &str) -> PyResult<Bound<'py, PyAny>> {
    let status = error.status() as u32;
    let class = errors_module(py)?.call_method1("error_class", (status,))?;
    let message = format!("{what}: {error}");
    match error {
        Error::Buffer { needed } => class.call1((message, *needed)),
        Error::Quota { limit, .. } => class.call1((message, limit.map(Limit::name))),
        _ => class.call1((message,)),
    }
}

/// The exception to raise for `error` during `what`.
fn raise(py: Python<'_>, error: &Error, what: &str) -> PyErr {
    match error_object(py, error, what) {
        Ok(object) => PyErr::from_value(object),
        Err(import_failed) => import_failed,
    }
}

/// `InvalidArgument(message)`, raised for arguments wrong on their face.
fn invalid(py: Python<'_>, message: String) -> PyErr {
    match errors_module(py).and_then(|m| m.getattr("InvalidArgument")?.call1((message,))) {
        Ok(object) => PyErr::from_value(object),
        Err(import_failed) => import_failed,
    }
}

/// A handle given by Python: a positive integer below 2**64.
/// `Ok(None)` for an int that cannot be a handle (0, negative, too large);
/// `TypeError` for anything that is not an int.
fn handle_number(value: &Bound<'_, PyAny>) -> PyResult<Option<Handle>> {
    if let Ok(raw) = value.extract::<u64>() {
        return Ok(Handle::new(raw));
    }
    if value.is_instance_of::<pyo3::types::PyInt>() {
        return Ok(None);
    }
    Err(PyTypeError::new_err(format!(
        "a handle is an int, not {}",
        type_name(value)
    )))
}

/// The handle argument of a single call; 0, negative or too large raises
/// `InvalidArgument` (a `ValueError`).
fn handle_arg(value: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Handle> {
    handle_number(value)?.ok_or_else(|| {
        invalid(
            value.py(),
            format!(
                "{name}: a handle is a positive integer below 2**64 (0 is never valid), got {}",
                value.repr().map(|r| r.to_string()).unwrap_or_default()
            ),
        )
    })
}

/// What a single call was, for its error messages (formatted only when
/// one is raised): `get(1234)`.
#[derive(Clone, Copy)]
struct Call {
    name: &'static str,
    handle: Option<Handle>,
}

impl Call {
    fn new(name: &'static str, handle: Handle) -> Call {
        Call {
            name,
            handle: Some(handle),
        }
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.handle {
            Some(h) => write!(f, "{}({h})", self.name),
            None => f.write_str(self.name),
        }
    }
}

fn type_name(value: &Bound<'_, PyAny>) -> String {
    value
        .get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "this type".to_owned())
}

/// The bytes of a bytes-like value: borrowed from `bytes` (immutable, so
/// safe to read with the GIL released), copied from anything else.
enum Value<'py> {
    Bytes(Bound<'py, PyBytes>),
    Copied(Vec<u8>),
}

impl Value<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Value::Bytes(b) => b.as_bytes(),
            Value::Copied(v) => v,
        }
    }
}

fn value_arg<'py>(value: &Bound<'py, PyAny>, call: &str) -> PyResult<Value<'py>> {
    if let Ok(bytes) = value.downcast::<PyBytes>() {
        return Ok(Value::Bytes(bytes.clone()));
    }
    if let Ok(array) = value.downcast::<PyByteArray>() {
        return Ok(Value::Copied(array.to_vec()));
    }
    let not_bytes_like = || {
        PyTypeError::new_err(format!(
            "{call}: the value must be bytes-like (bytes, bytearray, memoryview, array, ...), not {}",
            type_name(value)
        ))
    };
    let view = PyMemoryView::from(value).map_err(|_| not_bytes_like())?;
    let bytes = view.call_method0("tobytes")?;
    Ok(Value::Bytes(bytes.downcast_into::<PyBytes>()?))
}

/// Connects to hregd and starts a session.
///
/// ``socket``: a path (str or os.PathLike), or None for the default:
/// ``$HREG_SOCKET`` if set, else ``$XDG_RUNTIME_DIR/hreg.sock``, then
/// ``/run/hreg/hreg.sock`` (the first that accepts). ``name`` introduces the
/// client to the daemon (default: the program's name). Raises ConnectError
/// (no daemon), VersionMismatch, QuotaExceeded (the daemon refuses more
/// sessions), ProtocolError or IoError.
#[pyfunction]
#[pyo3(signature = (socket=None, name=None))]
fn connect(py: Python<'_>, socket: Option<PathBuf>, name: Option<String>) -> PyResult<Client> {
    let name = match name {
        Some(name) => name,
        None => program_name(py),
    };
    let path = socket.clone();
    let client = py
        .allow_threads(|| hreg::Client::connect_named(path.as_deref(), &name))
        .map_err(|e| raise(py, &e, "connect"))?;
    Ok(Client {
        inner: Mutex::new(Some(client)),
    })
}

/// The basename of `sys.argv[0]`, else "python".
fn program_name(py: Python<'_>) -> String {
    let argv0 = py
        .import("sys")
        .and_then(|sys| sys.getattr("argv")?.get_item(0)?.extract::<String>());
    argv0
        .ok()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "python".to_owned())
}

/// The socket paths a client given no path tries, in order.
#[pyfunction]
fn default_socket_paths() -> Vec<PathBuf> {
    hreg::default_socket_paths()
}

/// A session with hregd. Safe to share between threads (each thread gets
/// its own ring); every call that may wait releases the GIL. A context
/// manager: leaving the ``with`` block closes it. After ``close()`` every
/// call raises Disconnected.
#[pyclass(module = "hreg", frozen)]
struct Client {
    /// None once closed. Calls clone the client out (a reference count), so
    /// `close` never waits for calls in flight; the session ends when the
    /// last of them returns.
    inner: Mutex<Option<hreg::Client>>,
}

impl Client {
    fn client(&self, py: Python<'_>, call: Call) -> PyResult<hreg::Client> {
        let guard = lock(&self.inner);
        guard.clone().ok_or_else(|| {
            match errors_module(py).and_then(|m| {
                m.getattr("Disconnected")?
                    .call1((format!("{call}: the client is closed"),))
            }) {
                Ok(object) => PyErr::from_value(object),
                Err(import_failed) => import_failed,
            }
        })
    }

    /// One op through the Rust client with the GIL released.
    fn run(&self, py: Python<'_>, call: Call, op: Op<'_>) -> PyResult<Completion> {
        let client = self.client(py, call)?;
        let result = py.allow_threads(|| match op {
            Op::Insert { value, flags } => client.insert(value, flags).map(Completion::Inserted),
            Op::GetOwned { handle } => client.get(handle).map(Completion::Value),
            Op::Get { handle, buf } => client.get_into(handle, buf).map(Completion::Length),
            Op::Replace { handle, value } => {
                client.replace(handle, value).map(|_| Completion::Done)
            }
            Op::Retain(h) => client.retain(h).map(|_| Completion::Done),
            Op::Release(h) => client.release(h).map(|_| Completion::Done),
            Op::Remove(h) => client.remove(h).map(|_| Completion::Done),
        });
        result.map_err(|e| raise(py, &e, &call.to_string()))
    }

    /// Reads the value of `handle` into a fresh buffer of at most `cap`
    /// bytes (no value is longer than the daemon's maximum).
    fn fetch(
        &self,
        py: Python<'_>,
        handle: Handle,
        cap: usize,
        call: Call,
    ) -> PyResult<(Vec<u8>, usize)> {
        let max = self.client(py, call)?.max_value_size();
        let mut scratch = vec![0u8; cap.min(max)];
        match self.run(
            py,
            call,
            Op::Get {
                handle,
                buf: &mut scratch,
            },
        )? {
            Completion::Length(n) => Ok((scratch, n)),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(completion: Completion) -> PyErr {
    pyo3::exceptions::PyRuntimeError::new_err(format!("hreg: unexpected completion {completion:?}"))
}

fn flags(shared: bool, detached: bool) -> u32 {
    (if shared { hreg::SHARED } else { 0 }) | (if detached { hreg::DETACHED } else { 0 })
}

#[pymethods]
impl Client {
    /// Creates an object holding a copy of ``value`` (any bytes-like object)
    /// and returns its handle. ``shared``: other users may read it.
    /// ``detached``: it lives until removed and this session gets no
    /// reference (otherwise the session holds one).
    #[pyo3(signature = (value, *, shared=false, detached=false))]
    fn insert(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyAny>,
        shared: bool,
        detached: bool,
    ) -> PyResult<u64> {
        let value = value_arg(value, "insert")?;
        let op = Op::Insert {
            value: value.as_slice(),
            flags: flags(shared, detached),
        };
        let call = Call {
            name: "insert",
            handle: None,
        };
        match self.run(py, call, op)? {
            Completion::Inserted(h) => Ok(h.get()),
            other => Err(unexpected(other)),
        }
    }

    /// The value of ``handle``, as bytes.
    fn get(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<Py<PyBytes>> {
        let h = handle_arg(handle, "get")?;
        match self.run(py, Call::new("get", h), Op::GetOwned { handle: h })? {
            Completion::Value(v) => Ok(PyBytes::new(py, &v).unbind()),
            other => Err(unexpected(other)),
        }
    }

    /// Copies the value of ``handle`` into ``buffer`` (a writable bytes-like
    /// object: bytearray, memoryview, array, numpy array, ...) and returns
    /// its length. Raises BufferTooSmall (with ``.needed``) when it does not
    /// fit; an empty buffer probes the size.
    fn get_into(
        &self,
        py: Python<'_>,
        handle: &Bound<'_, PyAny>,
        buffer: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let h = handle_arg(handle, "get_into")?;
        let call = Call::new("get_into", h);
        if let Ok(array) = buffer.downcast::<PyByteArray>() {
            let (scratch, n) = self.fetch(py, h, array.len(), call)?;
            // SAFETY: we hold the GIL and call no Python code while the
            // slice lives, so nothing can resize the bytearray meanwhile.
            let target = unsafe { array.as_bytes_mut() };
            return match target.get_mut(..n) {
                Some(target) => {
                    target.copy_from_slice(&scratch[..n]);
                    Ok(n)
                }
                // Another thread shrank it while we waited.
                None => Err(raise(py, &Error::Buffer { needed: n }, &call.to_string())),
            };
        }
        let not_writable = |why: &str| {
            PyTypeError::new_err(format!(
                "{call}: the buffer must be a writable, C-contiguous bytes-like object \
                 (bytearray, memoryview, array, numpy array, ...); {} {why}",
                type_name(buffer)
            ))
        };
        let view = PyMemoryView::from(buffer).map_err(|_| not_writable("is not bytes-like"))?;
        if view.getattr("readonly")?.extract::<bool>()? {
            return Err(not_writable("is read-only"));
        }
        let flat = view
            .call_method1("cast", ("B",))
            .map_err(|_| not_writable("is not C-contiguous"))?;
        let (scratch, n) = self.fetch(py, h, flat.len()?, call)?;
        if n > flat.len()? {
            return Err(raise(py, &Error::Buffer { needed: n }, &call.to_string()));
        }
        flat.set_item(
            PySlice::new(py, 0, n as isize, 1),
            PyBytes::new(py, &scratch[..n]),
        )?;
        Ok(n)
    }

    /// Replaces the value of ``handle`` with a copy of ``value`` (bytes-like);
    /// readers see the old value or the new one, whole.
    fn replace(
        &self,
        py: Python<'_>,
        handle: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let h = handle_arg(handle, "replace")?;
        let value = value_arg(value, "replace")?;
        let op = Op::Replace {
            handle: h,
            value: value.as_slice(),
        };
        self.run(py, Call::new("replace", h), op).map(drop)
    }

    /// Takes one more reference to ``handle`` for this session.
    fn retain(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let h = handle_arg(handle, "retain")?;
        self.run(py, Call::new("retain", h), Op::Retain(h))
            .map(drop)
    }

    /// Drops one of this session's references to ``handle`` (NotHeld if it
    /// holds none); the object dies with its last reference.
    fn release(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let h = handle_arg(handle, "release")?;
        self.run(py, Call::new("release", h), Op::Release(h))
            .map(drop)
    }

    /// Kills the object now, whoever references it.
    fn remove(&self, py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let h = handle_arg(handle, "remove")?;
        self.run(py, Call::new("remove", h), Op::Remove(h))
            .map(drop)
    }

    /// Runs a batch of ops (``Insert``, ``Get``, ``Replace``, ``Retain``,
    /// ``Release``, ``Remove``) in order with one wait. Returns one result
    /// per op: the handle (int) for Insert, the value (bytes) for Get, None
    /// for the rest, or an ``hreg.Error`` instance (not raised) for an op
    /// that failed; a failed op does not stop the rest. Raises only when
    /// the batch as a whole could not run (Disconnected, ...).
    fn submit<'py>(
        &self,
        py: Python<'py>,
        ops: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let items = ops
            .try_iter()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "submit: ops must be an iterable of hreg ops, not {}",
                    type_name(ops)
                ))
            })?
            .collect::<PyResult<Vec<_>>>()?;
        let planned = items
            .iter()
            .enumerate()
            .map(|(i, item)| BatchOp::from_py(item, i))
            .collect::<PyResult<Vec<_>>>()?;
        let client = self.client(
            py,
            Call {
                name: "submit",
                handle: None,
            },
        )?;

        // Ops with a handle that can never be valid fail here, as libhreg
        // fails them; the rest go to the daemon as one batch.
        let mut batch = Vec::with_capacity(planned.len());
        for op in &planned {
            if let Some(op) = op.rust_op() {
                batch.push(op);
            }
        }
        let results = if batch.is_empty() {
            Vec::new()
        } else {
            py.allow_threads(|| client.submit(&mut batch))
                .map_err(|e| raise(py, &e, "submit"))?
        };
        drop(batch);

        let out = PyList::empty(py);
        let mut results = results.into_iter();
        for (i, op) in planned.iter().enumerate() {
            let what = format!("submit op {i} ({})", op.describe());
            let item = if op.rust_op().is_none() {
                invalid(
                    py,
                    format!(
                        "{what}: a handle is a positive integer below 2**64 (0 is never valid)"
                    ),
                )
                .into_value(py)
                .into_bound(py)
                .into_any()
            } else {
                match results.next() {
                    Some(Ok(Completion::Inserted(h))) => h.get().into_pyobject(py)?.into_any(),
                    Some(Ok(Completion::Value(v))) => PyBytes::new(py, &v).into_any(),
                    Some(Ok(Completion::Done | Completion::Length(_))) => py.None().into_bound(py),
                    Some(Err(e)) => error_object(py, &e, &what)?,
                    None => return Err(unexpected(Completion::Done)),
                }
            };
            out.append(item)?;
        }
        Ok(out)
    }

    /// Waits until every write this client posted (insert, release, retain)
    /// has been applied by the daemon, so that other processes see their
    /// effects. Raises the first late failure of a posted write since the
    /// last flush (e.g. StaleHandle for a retain of an object removed
    /// meanwhile); Disconnected when the daemon is gone.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let client = self.client(
            py,
            Call {
                name: "flush",
                handle: None,
            },
        )?;
        py.allow_threads(|| client.flush())
            .map_err(|e| raise(py, &e, "flush"))
    }

    /// The registry's figures: a dict with ``objects`` (live objects),
    /// ``value_bytes`` (bytes of live values), ``sessions`` (attached
    /// sessions) and ``ops`` (data-path requests served since start).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client(
            py,
            Call {
                name: "stats",
                handle: None,
            },
        )?;
        let stats = py
            .allow_threads(|| client.stats())
            .map_err(|e| raise(py, &e, "stats"))?;
        let dict = PyDict::new(py);
        dict.set_item("objects", stats.objects)?;
        dict.set_item("value_bytes", stats.value_bytes)?;
        dict.set_item("sessions", stats.sessions)?;
        dict.set_item("ops", stats.ops)?;
        Ok(dict)
    }

    /// Ends the session: the daemon drops every reference it held (DETACHED
    /// objects stay). Calling it again does nothing; any other call after
    /// it raises Disconnected.
    fn close(&self, py: Python<'_>) {
        let client = lock(&self.inner).take();
        // Dropping the last clone sends GOODBYE: let other threads run.
        py.allow_threads(|| drop(client));
    }

    /// Whether ``close()`` was called.
    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).is_none()
    }

    /// The session's id, as the daemon numbers sessions.
    #[getter]
    fn session_id(&self, py: Python<'_>) -> PyResult<u64> {
        Ok(self
            .client(
                py,
                Call {
                    name: "session_id",
                    handle: None,
                },
            )?
            .session_id())
    }

    /// The largest value the daemon accepts, in bytes.
    #[getter]
    fn max_value_size(&self, py: Python<'_>) -> PyResult<usize> {
        Ok(self
            .client(
                py,
                Call {
                    name: "max_value_size",
                    handle: None,
                },
            )?
            .max_value_size())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        match &*lock(&self.inner) {
            Some(c) => format!("<hreg.Client session={}>", c.session_id()),
            None => "<hreg.Client closed>".to_owned(),
        }
    }
}

/// A handle as a batch op keeps it: `None` when the int given can never
/// be a handle (the op then fails with InvalidArgument, as in libhreg).
#[derive(Clone, Copy)]
struct OpHandle {
    handle: Option<Handle>,
    given: i128,
}

impl OpHandle {
    fn new(value: &Bound<'_, PyAny>) -> PyResult<OpHandle> {
        let handle = handle_number(value)?;
        // For repr and messages only; saturates far outside the u64 range.
        let given = value.extract::<i128>().unwrap_or(i128::MIN);
        Ok(OpHandle { handle, given })
    }
}

/// Batch op: create an object. ``Insert(value, *, shared=False,
/// detached=False)``; its result is the new handle.
#[pyclass(module = "hreg", frozen)]
struct Insert {
    value: Vec<u8>,
    flags: u32,
}

#[pymethods]
impl Insert {
    #[new]
    #[pyo3(signature = (value, *, shared=false, detached=false))]
    fn new(value: &Bound<'_, PyAny>, shared: bool, detached: bool) -> PyResult<Insert> {
        let value = value_arg(value, "Insert")?.as_slice().to_vec();
        Ok(Insert {
            value,
            flags: flags(shared, detached),
        })
    }

    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.value)
    }

    #[getter]
    fn shared(&self) -> bool {
        self.flags & hreg::SHARED != 0
    }

    #[getter]
    fn detached(&self) -> bool {
        self.flags & hreg::DETACHED != 0
    }

    fn __repr__(&self) -> String {
        format!(
            "hreg.Insert(<{} bytes>, shared={}, detached={})",
            self.value.len(),
            if self.shared() { "True" } else { "False" },
            if self.detached() { "True" } else { "False" }
        )
    }
}

/// Batch op: ``Replace(handle, value)``; its result is None.
#[pyclass(module = "hreg", frozen)]
struct Replace {
    handle: OpHandle,
    value: Vec<u8>,
}

#[pymethods]
impl Replace {
    #[new]
    fn new(handle: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<Replace> {
        Ok(Replace {
            handle: OpHandle::new(handle)?,
            value: value_arg(value, "Replace")?.as_slice().to_vec(),
        })
    }

    #[getter]
    fn handle(&self) -> i128 {
        self.handle.given
    }

    #[getter]
    fn value<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.value)
    }

    fn __repr__(&self) -> String {
        format!(
            "hreg.Replace({}, <{} bytes>)",
            self.handle.given,
            self.value.len()
        )
    }
}

/// The batch ops that take only a handle: one class each.
macro_rules! handle_op {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[pyclass(module = "hreg", frozen)]
        struct $name {
            handle: OpHandle,
        }

        #[pymethods]
        impl $name {
            #[new]
            fn new(handle: &Bound<'_, PyAny>) -> PyResult<$name> {
                Ok($name {
                    handle: OpHandle::new(handle)?,
                })
            }

            #[getter]
            fn handle(&self) -> i128 {
                self.handle.given
            }

            fn __repr__(&self) -> String {
                format!(
                    concat!("hreg.", stringify!($name), "({})"),
                    self.handle.given
                )
            }
        }
    };
}

handle_op!(
    Get,
    "Batch op: ``Get(handle)``; its result is the value (bytes)."
);
handle_op!(Retain, "Batch op: ``Retain(handle)``; its result is None.");
handle_op!(
    Release,
    "Batch op: ``Release(handle)``; its result is None."
);
handle_op!(Remove, "Batch op: ``Remove(handle)``; its result is None.");

/// One item of a batch, borrowed from its Python object for the call.
enum BatchOp<'py> {
    Insert(Bound<'py, Insert>),
    Get(Bound<'py, Get>),
    Replace(Bound<'py, Replace>),
    Retain(Bound<'py, Retain>),
    Release(Bound<'py, Release>),
    Remove(Bound<'py, Remove>),
}

impl<'py> BatchOp<'py> {
    fn from_py(item: &Bound<'py, PyAny>, index: usize) -> PyResult<BatchOp<'py>> {
        macro_rules! try_kind {
            ($($kind:ident),*) => {
                $(if let Ok(op) = item.downcast::<$kind>() {
                    return Ok(BatchOp::$kind(op.clone()));
                })*
            };
        }
        try_kind!(Insert, Get, Replace, Retain, Release, Remove);
        Err(PyTypeError::new_err(format!(
            "submit: op {index} is a {}, not an hreg op (Insert, Get, Replace, Retain, Release, Remove)",
            type_name(item)
        )))
    }

    /// The Rust op; None when its handle can never be valid.
    fn rust_op(&self) -> Option<Op<'_>> {
        Some(match self {
            BatchOp::Insert(op) => {
                let op = op.get();
                Op::Insert {
                    value: &op.value,
                    flags: op.flags,
                }
            }
            BatchOp::Get(op) => Op::GetOwned {
                handle: op.get().handle.handle?,
            },
            BatchOp::Replace(op) => {
                let op = op.get();
                Op::Replace {
                    handle: op.handle.handle?,
                    value: &op.value,
                }
            }
            BatchOp::Retain(op) => Op::Retain(op.get().handle.handle?),
            BatchOp::Release(op) => Op::Release(op.get().handle.handle?),
            BatchOp::Remove(op) => Op::Remove(op.get().handle.handle?),
        })
    }

    fn describe(&self) -> String {
        match self {
            BatchOp::Insert(_) => "Insert".to_owned(),
            BatchOp::Get(op) => format!("Get {}", op.get().handle.given),
            BatchOp::Replace(op) => format!("Replace {}", op.get().handle.given),
            BatchOp::Retain(op) => format!("Retain {}", op.get().handle.given),
            BatchOp::Release(op) => format!("Release {}", op.get().handle.given),
            BatchOp::Remove(op) => format!("Remove {}", op.get().handle.given),
        }
    }
}

#[pymodule]
fn _hreg(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(connect, m)?)?;
    m.add_function(wrap_pyfunction!(default_socket_paths, m)?)?;
    m.add_class::<Client>()?;
    m.add_class::<Insert>()?;
    m.add_class::<Get>()?;
    m.add_class::<Replace>()?;
    m.add_class::<Retain>()?;
    m.add_class::<Release>()?;
    m.add_class::<Remove>()?;
    Ok(())
}
