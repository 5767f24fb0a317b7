//! Nonblocking requests and the scopes that keep their buffers borrowed.
//!
//! A request borrows its buffer for the lifetime `'a` of its [`LocalScope`]. Dropping an
//! unfinished request waits for it, and a scope waits at its end for every request it issued
//! that was leaked with `mem::forget`, so a buffer is never released while Braid may still
//! read or write it.
//!
//! # Standard section(s)
//! MPI-4.1 §3.7 (nonblocking communication).
//!
//! # Not yet implemented
//! Persistent requests, cancellation, `MPI_Waitsome`/`MPI_Testsome`.

use std::cell::RefCell;
use std::marker::PhantomData;

use braid_engine::ReqId;

use crate::communicator::Status;
use crate::core::{Finished, with_core};
use crate::error::Error;

mod sealed {
    pub trait Sealed {}
}

/// Where requests are registered so that none outlives its buffers.
pub trait Scope<'a>: Copy + sealed::Sealed {
    #[doc(hidden)]
    fn register(&self, id: ReqId);
    #[doc(hidden)]
    fn unregister(&self, id: ReqId);
}

/// A scope created by [`scope`]. At its end it waits for every request still outstanding.
#[derive(Debug)]
pub struct LocalScope<'a> {
    /// Requests issued in this scope and not yet finished and collected.
    outstanding: RefCell<Vec<ReqId>>,
    _invariant: PhantomData<std::cell::Cell<&'a ()>>,
}

impl Drop for LocalScope<'_> {
    fn drop(&mut self) {
        for id in self.outstanding.take() {
            let _ = with_core(|c| c.wait(id));
        }
    }
}

impl sealed::Sealed for &LocalScope<'_> {}

impl<'a> Scope<'a> for &LocalScope<'a> {
    fn register(&self, id: ReqId) {
        self.outstanding.borrow_mut().push(id);
    }
    fn unregister(&self, id: ReqId) {
        self.outstanding.borrow_mut().retain(|x| *x != id);
    }
}

/// Runs `f` with a scope for nonblocking requests; buffers borrowed by requests must outlive
/// the scope.
///
/// # Examples
/// ```no_run
/// use braid::traits::*;
/// let universe = braid::initialize().unwrap();
/// let world = universe.world();
/// let x = [1u32, 2, 3];
/// braid::request::scope(|scope| {
///     let r = world.process_at_rank(0).immediate_send(scope, &x[..]).unwrap();
///     r.wait().unwrap();
/// });
/// ```
pub fn scope<'a, F, R>(f: F) -> R
where
    F: FnOnce(&LocalScope<'a>) -> R,
{
    f(&LocalScope {
        outstanding: RefCell::new(Vec::new()),
        _invariant: PhantomData,
    })
}

/// What a request's result means.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Send,
    Recv { capacity: usize },
}

/// A nonblocking operation in flight. Drop waits for it if it has not finished.
#[derive(Debug)]
#[must_use = "dropping a request waits for it; call wait() or test() to see its result"]
pub struct Request<'a, S: Scope<'a>> {
    id: ReqId,
    scope: S,
    kind: Kind,
    /// The result was collected (by wait or test).
    done: bool,
    _buffer: PhantomData<&'a mut [u8]>,
}

impl<'a, S: Scope<'a>> Request<'a, S> {
    pub(crate) fn new(id: ReqId, scope: S, kind: Kind) -> Self {
        scope.register(id);
        Self {
            id,
            scope,
            kind,
            done: false,
            _buffer: PhantomData,
        }
    }

    fn finish(&mut self, f: Finished) -> Result<Status, Error> {
        self.done = true;
        self.scope.unregister(self.id);
        Status::from_finished(f, self.kind)
    }

    /// Waits for the operation to finish.
    ///
    /// # Errors
    /// Truncation, a lost peer, or a local failure.
    pub fn wait(mut self) -> Result<Status, Error> {
        let f = with_core(|c| c.wait(self.id))?;
        self.finish(f)
    }

    /// Returns the status if the operation has finished, making progress first.
    ///
    /// # Errors
    /// As [`Request::wait`]; also when called again after it returned a status.
    pub fn test(&mut self) -> Result<Option<Status>, Error> {
        if self.done {
            return Err(Error::LocalOs("request already completed".into()));
        }
        match with_core(|c| c.test(self.id))? {
            Some(f) => self.finish(f).map(Some),
            None => Ok(None),
        }
    }
}

impl<'a, S: Scope<'a>> Drop for Request<'a, S> {
    fn drop(&mut self) {
        if !self.done {
            let _ = with_core(|c| c.wait(self.id));
            self.scope.unregister(self.id);
        }
    }
}

/// Waits for all requests; returns their statuses in order.
///
/// # Errors
/// The first error among them (all are waited for regardless).
pub fn wait_all<'a, S: Scope<'a>>(reqs: Vec<Request<'a, S>>) -> Result<Vec<Status>, Error> {
    let mut out = Vec::with_capacity(reqs.len());
    let mut first_err = None;
    for r in reqs {
        match r.wait() {
            Ok(s) => out.push(s),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Waits for any one request, removes it from `reqs` and returns its former index and status.
///
/// # Errors
/// That request's error; also when `reqs` is empty.
pub fn wait_any<'a, S: Scope<'a>>(reqs: &mut Vec<Request<'a, S>>) -> Result<(usize, Status), Error> {
    if reqs.is_empty() {
        return Err(Error::LocalOs("wait_any on no requests".into()));
    }
    let ids: Vec<ReqId> = reqs.iter().map(|r| r.id).collect();
    let i = with_core(|c| c.wait_any(&ids))?;
    let mut r = reqs.remove(i);
    let f = with_core(|c| c.collect(r.id)).ok_or_else(|| Error::LocalOs("request vanished".into()))?;
    r.finish(f).map(|s| (i, s))
}

/// If every request has finished, removes them all and returns their statuses in order.
///
/// # Errors
/// The first error among them, once all have finished.
pub fn test_all<'a, S: Scope<'a>>(reqs: &mut Vec<Request<'a, S>>) -> Result<Option<Vec<Status>>, Error> {
    let ids: Vec<ReqId> = reqs.iter().map(|r| r.id).collect();
    let all = with_core(|c| -> Result<bool, Error> {
        c.progress(Some(std::time::Duration::ZERO))?;
        Ok(ids.iter().all(|id| c.is_finished(*id)))
    })?;
    if !all {
        return Ok(None);
    }
    wait_all(std::mem::take(reqs)).map(Some)
}
