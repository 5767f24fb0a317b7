//! Nonblocking requests and the scopes that keep their buffers borrowed.
//!
//! A request borrows its buffer for the lifetime `'a` of its [`LocalScope`]. Dropping an
//! unfinished request waits for it, and a scope waits at its end for every request it issued
//! that was leaked with `mem::forget`, so a buffer is never released while Braid may still
//! read or write it. Requests of nonblocking collectives (`immediate_barrier`, ...) are the
//! same type; every wait or test on any request, like every send, receive, probe or posting of a
//! nonblocking operation, also advances the collectives in flight (see `braid::collective`).
//!
//! # Standard section(s)
//! MPI-4.1 §3.7 (nonblocking communication), §6.12 (nonblocking collectives).
//!
//! # Not yet implemented
//! Persistent requests, cancellation, `MPI_Waitsome`/`MPI_Testsome`.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use braid_engine::ReqId;

use crate::collective::schedule::Exec;
use crate::communicator::Status;
use crate::core::{Finished, with_core};
use crate::error::Error;
use crate::group::Group;

mod sealed {
    pub trait Sealed {}
}

/// What a request stands for.
#[derive(Clone, Debug)]
pub(crate) enum Handle {
    /// A point-to-point request of the core.
    P2p(ReqId),
    /// A nonblocking collective's schedule.
    Coll(Arc<Mutex<Exec>>),
    /// A send that was complete when it was started (a small message the transport wrote or
    /// copied at once): nothing to wait for.
    Sent,
}

impl Handle {
    fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::P2p(a), Self::P2p(b)) => a == b,
            (Self::Coll(a), Self::Coll(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Waits for it, discarding the result.
    fn wait_quietly(&self) {
        let _ = match self {
            Self::P2p(id) => crate::collective::wait_p2p(*id).map(drop),
            Self::Coll(e) => crate::collective::wait_exec(e),
            Self::Sent => Ok(()),
        };
    }
}

/// Where requests are registered so that none outlives its buffers.
pub trait Scope<'a>: Copy + sealed::Sealed {
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn register(&self, h: &Handle);
    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn unregister(&self, h: &Handle);
}

/// A scope created by [`scope`]. At its end it waits for every request still outstanding.
#[derive(Debug)]
pub struct LocalScope<'a> {
    /// Requests issued in this scope and not yet finished and collected.
    outstanding: RefCell<Vec<Handle>>,
    _invariant: PhantomData<std::cell::Cell<&'a ()>>,
}

impl Drop for LocalScope<'_> {
    fn drop(&mut self) {
        for h in self.outstanding.take() {
            h.wait_quietly();
        }
    }
}

impl sealed::Sealed for &LocalScope<'_> {}

impl<'a> Scope<'a> for &LocalScope<'a> {
    #[allow(private_interfaces)]
    fn register(&self, h: &Handle) {
        self.outstanding.borrow_mut().push(h.clone());
    }
    #[allow(private_interfaces)]
    fn unregister(&self, h: &Handle) {
        // Requests mostly finish in the order they were issued: the search ends at once.
        let mut v = self.outstanding.borrow_mut();
        if let Some(i) = v.iter().position(|x| x.same(h)) {
            // Order does not matter; the next request to finish usually stays in front.
            v.swap_remove(i);
        }
    }
}

/// The scope of requests that borrow nothing (rsmpi's `StaticScope`), e.g.
/// `immediate_barrier`.
#[derive(Clone, Copy, Debug, Default)]
pub struct StaticScope;

impl sealed::Sealed for StaticScope {}

impl Scope<'static> for StaticScope {
    #[allow(private_interfaces)]
    fn register(&self, _h: &Handle) {}
    #[allow(private_interfaces)]
    fn unregister(&self, _h: &Handle) {}
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
    Collective,
}

/// A nonblocking operation in flight. Drop waits for it if it has not finished.
#[derive(Debug)]
#[must_use = "dropping a request waits for it; call wait() or test() to see its result"]
pub struct Request<'a, S: Scope<'a>> {
    handle: Handle,
    scope: S,
    kind: Kind,
    /// Group to translate a receive's world source rank with.
    group: Option<Group>,
    /// Packed copy of a non-contiguous send buffer, alive until the send completes.
    _keep: Option<Vec<u8>>,
    /// The result was collected (by wait or test).
    done: bool,
    _buffer: PhantomData<&'a mut [u8]>,
}

impl<'a, S: Scope<'a>> Request<'a, S> {
    pub(crate) fn new(id: ReqId, scope: S, kind: Kind) -> Self {
        Self::from_handle(Handle::P2p(id), scope, kind)
    }

    /// The request of a send that completed as it started.
    pub(crate) fn sent(scope: S) -> Self {
        Self::from_handle(Handle::Sent, scope, Kind::Send)
    }

    fn from_handle(handle: Handle, scope: S, kind: Kind) -> Self {
        if !matches!(handle, Handle::Sent) {
            scope.register(&handle);
        }
        Self {
            handle,
            scope,
            kind,
            group: None,
            _keep: None,
            done: false,
            _buffer: PhantomData,
        }
    }

    /// A point-to-point request whose status is translated through `group`, keeping `keep`
    /// alive until it completes.
    pub(crate) fn with_group(mut self, group: Group, keep: Option<Vec<u8>>) -> Self {
        self.group = Some(group);
        self._keep = keep;
        self
    }

    /// The request of a started nonblocking collective.
    pub(crate) fn collective(e: Arc<Mutex<Exec>>, scope: S) -> Self {
        Self::from_handle(Handle::Coll(e), scope, Kind::Collective)
    }

    /// As [`Request::collective`]; `None` (nothing started) cannot happen for immediate forms.
    pub(crate) fn collective_opt(e: Option<Arc<Mutex<Exec>>>, scope: S) -> Self {
        match e {
            Some(e) => Self::collective(e, scope),
            None => Self::collective(Arc::new(Mutex::new(Exec::finished())), scope),
        }
    }

    fn finish(&mut self, f: Finished) -> Result<Status, Error> {
        self.done = true;
        self.unregister();
        let s = Status::from_finished(f, self.kind)?;
        Ok(match &self.group {
            Some(g) => s.translated(g),
            None => s,
        })
    }

    fn finish_coll(&mut self, r: Result<(), Error>) -> Result<Status, Error> {
        self.done = true;
        self.unregister();
        r.map(|()| Status::collective())
    }

    /// Waits for the operation to finish.
    ///
    /// # Errors
    /// Truncation, a lost peer, or a local failure.
    pub fn wait(mut self) -> Result<Status, Error> {
        match self.handle.clone() {
            Handle::P2p(id) => {
                let f = crate::collective::wait_p2p(id)?;
                self.finish(f)
            }
            Handle::Coll(e) => {
                let r = crate::collective::wait_exec(&e);
                self.finish_coll(r)
            }
            Handle::Sent => self.finish(Ok(crate::core::sent_status())),
        }
    }

    /// Returns the status if the operation has finished, making progress first.
    ///
    /// # Errors
    /// As [`Request::wait`]; also when called again after it returned a status.
    pub fn test(&mut self) -> Result<Option<Status>, Error> {
        if self.done {
            return Err(Error::LocalOs("request already completed".into()));
        }
        match self.handle.clone() {
            Handle::P2p(id) => {
                crate::collective::progress_all();
                match with_core(|c| c.test(id))? {
                    Some(f) => self.finish(f).map(Some),
                    None => Ok(None),
                }
            }
            Handle::Coll(e) => match crate::collective::test_exec(&e) {
                Ok(false) => Ok(None),
                Ok(true) => self.finish_coll(Ok(())).map(Some),
                Err(err) => self.finish_coll(Err(err)).map(Some),
            },
            Handle::Sent => self.finish(Ok(crate::core::sent_status())).map(Some),
        }
    }

    /// Removes the request from its scope's outstanding set (a [`Handle::Sent`] never
    /// entered it).
    fn unregister(&self) {
        if !matches!(self.handle, Handle::Sent) {
            self.scope.unregister(&self.handle);
        }
    }

    fn p2p_id(&self) -> Option<ReqId> {
        match self.handle {
            Handle::P2p(id) => Some(id),
            Handle::Coll(_) | Handle::Sent => None,
        }
    }
}

impl<'a, S: Scope<'a>> Drop for Request<'a, S> {
    fn drop(&mut self) {
        if !self.done {
            self.handle.wait_quietly();
            self.unregister();
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
pub fn wait_any<'a, S: Scope<'a>>(
    reqs: &mut Vec<Request<'a, S>>,
) -> Result<(usize, Status), Error> {
    if reqs.is_empty() {
        return Err(Error::LocalOs("wait_any on no requests".into()));
    }
    loop {
        for i in 0..reqs.len() {
            if let Some(s) = reqs[i].test()? {
                let mut r = reqs.remove(i);
                r.done = true;
                return Ok((i, s));
            }
        }
        let ids: Vec<ReqId> = reqs.iter().filter_map(Request::p2p_id).collect();
        if ids.len() == reqs.len() && crate::collective::nothing_active() {
            let i = with_core(|c| c.wait_any(&ids))?;
            let mut r = reqs.remove(i);
            let id = ids[i];
            let f = with_core(|c| c.collect(id))
                .ok_or_else(|| Error::LocalOs("request vanished".into()))?;
            return r.finish(f).map(|s| (i, s));
        }
        with_core(|c| c.progress(Some(std::time::Duration::from_micros(200))))?;
    }
}

/// If every request has finished, removes them all and returns their statuses in order.
///
/// # Errors
/// The first error among them, once all have finished.
pub fn test_all<'a, S: Scope<'a>>(
    reqs: &mut Vec<Request<'a, S>>,
) -> Result<Option<Vec<Status>>, Error> {
    crate::collective::progress_all();
    let ids: Vec<ReqId> = reqs.iter().filter_map(Request::p2p_id).collect();
    let mut all = with_core(|c| -> Result<bool, Error> {
        c.progress(Some(std::time::Duration::ZERO))?;
        Ok(ids.iter().all(|id| c.is_finished(*id)))
    })?;
    for r in reqs.iter() {
        if let Handle::Coll(e) = &r.handle {
            all &= crate::collective::test_exec(e)?;
        }
    }
    if !all {
        return Ok(None);
    }
    wait_all(std::mem::take(reqs)).map(Some)
}
