//! The device thread: one epoll loop per VM for every virtio device. It waits on the queue
//! notification eventfds (ioeventfds, written by KVM when the guest writes `QueueNotify`),
//! each slot's activation kick, and the descriptors devices register through their
//! [`EventRegistry`](super::EventRegistry), and calls the device with the event while holding
//! its core's lock. A snapshot quiesces the loop by holding every core's lock.
//!
//! Level-triggered: an event a device does not consume comes back on the next wait, so a
//! device must change its interest when it cannot make progress.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::device::{DeviceEvent, Readiness, key};
use super::mmio::{VirtioCore, lock_core};

/// What the loop needs of one device slot.
pub(crate) struct LoopSlot {
    pub core: Arc<Mutex<VirtioCore>>,
    pub queue_evts: Vec<EventFd>,
    pub kick: EventFd,
}

/// The running device thread.
pub struct EventLoop {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
}

/// Creates the epoll set devices register with before the loop starts.
pub(crate) fn new_epoll() -> io::Result<Arc<Epoll>> {
    Epoll::new().map(Arc::new)
}

impl EventLoop {
    /// Registers the slots' eventfds on `epoll` and starts the thread.
    pub(crate) fn start(epoll: Arc<Epoll>, slots: Vec<LoopSlot>) -> io::Result<EventLoop> {
        let stop = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, key::pack(0, key::KIND_STOP, 0)),
        )?;
        register(&epoll, &slots)?;
        let thread = std::thread::Builder::new()
            .name("virtio".into())
            .stack_size(256 << 10)
            .spawn(move || run(&epoll, &slots))
            .map_err(|e| match crate::vstate::vcpu::spawn_hint(&e) {
                "" => e,
                hint => io::Error::new(e.kind(), format!("{e}{hint}")),
            })?;
        Ok(EventLoop {
            stop,
            thread: Some(thread),
        })
    }
}

/// Registers each slot's activation kick and queue notification eventfds on `epoll`.
pub(crate) fn register(epoll: &Epoll, slots: &[LoopSlot]) -> io::Result<()> {
    let add = |fd: &EventFd, k: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, k),
        )
    };
    for (i, slot) in slots.iter().enumerate() {
        let s = i as u16;
        add(&slot.kick, key::pack(s, key::KIND_KICK, 0))?;
        for (q, evt) in slot.queue_evts.iter().enumerate() {
            add(evt, key::pack(s, key::KIND_QUEUE, q as u32))?;
        }
    }
    Ok(())
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(epoll: &Epoll, slots: &[LoopSlot]) {
    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Device) {
        // Fail closed: devices must not serve the guest unfiltered, and this thread has no
        // way to stop the VM cleanly; the runtime sees exit code 1.
        tracing::error!("{e}");
        std::process::exit(1);
    }
    let mut events = [EpollEvent::default(); 32];
    loop {
        match dispatch(epoll, slots, -1, &mut events) {
            Ok(Dispatched::Stop) => return,
            Ok(Dispatched::Events(_)) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "virtio device thread: epoll failed");
                return;
            }
        }
    }
}

/// What one [`dispatch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dispatched {
    /// The stop eventfd fired.
    Stop,
    /// This many ready descriptors were handled (0: the wait timed out).
    Events(usize),
}

/// Waits up to `timeout_ms` (-1: forever) for ready descriptors and delivers each one's event
/// to its device: one turn of the device thread (the fuzz targets turn it themselves).
pub(crate) fn dispatch(
    epoll: &Epoll,
    slots: &[LoopSlot],
    timeout_ms: i32,
    events: &mut [EpollEvent],
) -> io::Result<Dispatched> {
    let n = epoll.wait(timeout_ms, events)?;
    for ev in &events[..n] {
        let (slot, kind, token) = key::unpack(ev.data());
        if kind == key::KIND_STOP {
            return Ok(Dispatched::Stop);
        }
        let Some(s) = slots.get(usize::from(slot)) else {
            continue;
        };
        let event = match kind {
            key::KIND_QUEUE => {
                if let Some(evt) = s.queue_evts.get(token as usize) {
                    let _ = evt.read();
                }
                DeviceEvent::Queue(token as u16)
            }
            key::KIND_KICK => {
                let _ = s.kick.read();
                DeviceEvent::Activated
            }
            _ => DeviceEvent::Fd {
                token,
                readiness: Readiness::from_flags(ev.event_set()),
            },
        };
        lock_core(&s.core).handle_event(event);
    }
    Ok(Dispatched::Events(n))
}
