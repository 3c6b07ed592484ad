//! A spinning team of helper threads for one image's layers (batch 1 on several threads).
//!
//! A ResNet-20 image is ~40 parallel loops of 2-10 µs. On rayon's pool the idle worker polls for work with
//! `sched_yield` system calls, which take microseconds on a VM: `perf` at 2 threads, batch 1 showed the second
//! worker running a third of the kernel's tasks and spending the rest in the scheduler. Here, while a forward runs
//! ([`run`]), `threads − 1` helper threads spin on one cache line for the next loop (as ONNX Runtime's intra-op pool
//! does); each member runs a fixed share of the loop's tasks, in order (the same rows layer after layer, so their
//! data stays in its core's cache), and reports on another line. Between forwards the helpers keep spinning for
//! [`GRACE`], then park. Where no forward holds the team (batches, nested loops, a second caller, a pool of another
//! size), the loops run on rayon as before.
//!
//! `unsafe` here: the caller lends a loop's `Region` to the helpers by pointer ([`Team::region`] publishes it, the
//! helper dereferences it), sound because the caller waits for every helper's report before the region ends; and
//! [`for_each_mut`] makes `&mut` to the item a task index names, sound because each index is one member's.
use rayon::prelude::*;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long helpers keep spinning after a forward (so back-to-back images never wait for a thread to wake).
const GRACE: Duration = Duration::from_millis(2);

/// What the caller writes to open a region, on one cache line (the helpers poll it).
#[repr(align(64))]
#[derive(Default)]
struct Publish {
    /// Bumped to open a region.
    epoch: AtomicUsize,
    /// The open region (`*const Region`).
    job: AtomicPtr<()>,
}

/// What the helpers write back, on another line.
#[repr(align(64))]
#[derive(Default)]
struct Done {
    /// Helpers done with the open region (each adds one once it no longer touches it).
    helpers: AtomicUsize,
    panicked: AtomicBool,
}

#[derive(Default)]
struct Shared {
    publish: Publish,
    done: Done,
    /// A forward holds the team: helpers spin.
    live: AtomicBool,
    park: Mutex<()>,
    wake: Condvar,
}

/// One parallel loop: tasks `0..n`.
struct Region<'a> {
    n: usize,
    f: &'a (dyn Fn(usize) + Sync),
}

struct Team {
    shared: Arc<Shared>,
    helpers: usize,
    /// Held by the forward that uses the team.
    busy: Mutex<()>,
}

static TEAM: OnceLock<Team> = OnceLock::new();

thread_local! {
    /// Whether this thread's forward holds the team.
    static HOLDS: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` (one image's forward) with the team of `helpers` threads serving its loops, where the team is free and
/// of that size (the first call sizes it); else just runs `f`.
pub(crate) fn run<R>(helpers: usize, f: impl FnOnce() -> R) -> R {
    enter(helpers, false, f)
}

/// [`run`], waiting for the team where another forward holds it (tests, which run side by side, must get it).
#[cfg(test)]
pub(crate) fn run_waiting<R>(helpers: usize, f: impl FnOnce() -> R) -> R {
    enter(helpers, true, f)
}

fn enter<R>(helpers: usize, wait: bool, f: impl FnOnce() -> R) -> R {
    if helpers == 0 || HOLDS.get() {
        return f();
    }
    let team = TEAM.get_or_init(|| Team::spawn(helpers));
    // A forward that panicked while holding the team poisoned `busy`: the team itself is fine (the `Leave` guard
    // reset it), so it is taken all the same.
    let busy = match wait {
        true => Some(team.busy.lock().unwrap_or_else(|e| e.into_inner())),
        false => match team.busy.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        },
    };
    let Some(_busy) = busy.filter(|_| team.helpers == helpers) else {
        return f();
    };
    let s = &team.shared;
    {
        let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
        s.live.store(true, SeqCst);
        s.wake.notify_all();
    }
    /// Leaves team mode however `f` ends.
    struct Leave<'a>(&'a Shared);
    impl Drop for Leave<'_> {
        fn drop(&mut self) {
            HOLDS.set(false);
            self.0.live.store(false, SeqCst);
        }
    }
    let _leave = Leave(s);
    HOLDS.set(true);
    f()
}

/// Whether this thread's forward holds the team (its loops run there).
pub(crate) fn holds() -> bool {
    HOLDS.get()
}

/// Rows per parallel piece of a loop over `rows` rows that takes at least `min` rows per piece on rayon (where a
/// piece must outweigh a wake-up): on the team, two pieces per thread.
pub(crate) fn piece_rows(rows: usize, min: usize) -> usize {
    match TEAM.get().filter(|_| HOLDS.get()) {
        Some(t) => rows.div_ceil(2 * (t.helpers + 1)).max(1),
        None => min.max(1),
    }
}

/// `f(i, &mut items[i])` for every item, in parallel: on the team where this thread's forward holds it, else on
/// rayon.
// Inlined so that a single piece (every loop off the team) runs in the caller's code, compiled for its target
// features (the runtime's element-wise loops are AVX2 there).
#[inline(always)]
pub(crate) fn for_each_mut<I: Send>(items: &mut [I], f: impl Fn(usize, &mut I) + Sync) {
    if let [only] = items {
        return f(0, only);
    }
    let team = TEAM.get().filter(|_| HOLDS.get());
    let Some(team) = team else {
        items.par_iter_mut().enumerate().for_each(|(i, it)| f(i, it));
        return;
    };
    let n = items.len();
    /// The items' base pointer, shared with the helpers.
    struct Base<I>(*mut I);
    // SAFETY: tasks only make `&mut` to distinct items (`I: Send`) through it.
    unsafe impl<I: Send> Sync for Base<I> {}
    let base = &Base(items.as_mut_ptr());
    let task = |i: usize| {
        assert!(i < n);
        // SAFETY: `items` is borrowed mutably until `region` returns, which waits for every task; the region
        // hands out each index once, so this is the only reference to item i.
        f(i, unsafe { &mut *base.0.add(i) })
    };
    // A loop inside a task runs on rayon: the team serves one region at a time.
    HOLDS.set(false);
    let _back = Back;
    team.region(n, &task);
}

/// Gives this thread's forward the team back after a region, however the region ends.
struct Back;

impl Drop for Back {
    fn drop(&mut self) {
        HOLDS.set(true);
    }
}

impl Team {
    fn spawn(helpers: usize) -> Team {
        let shared = Arc::new(Shared::default());
        for h in 0..helpers {
            let s = shared.clone();
            let spawned =
                std::thread::Builder::new().name(format!("lq-team-{h}")).spawn(move || helper(&s, h + 1, helpers + 1));
            if spawned.is_err() {
                // No helper thread: a team of none, whose callers just run their loops on rayon.
                return Team { shared, helpers: usize::MAX, busy: Mutex::new(()) };
            }
        }
        Team { shared, helpers, busy: Mutex::new(()) }
    }

    /// Tasks `0..n` of `f` on this thread and the helpers; returns when all are done (re-raising a task's panic).
    fn region(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        let r = Region { n, f };
        s.done.helpers.store(0, SeqCst);
        s.publish.job.store(&r as *const Region as *mut (), SeqCst);
        s.publish.epoch.fetch_add(1, SeqCst);
        work(&r, s, 0, self.helpers + 1);
        // Every helper runs every region (its share may be empty) and reports once it no longer touches `r`.
        while s.done.helpers.load(SeqCst) < self.helpers {
            std::hint::spin_loop();
        }
        if s.done.panicked.swap(false, SeqCst) {
            panic!("a parallel task panicked");
        }
    }
}

/// Runs member `m`'s share of `r` (of `members`: tasks in order, so a member keeps the same rows layer after layer
/// and their data stays in its core's cache).
///
/// Nothing here may unwind (a helper that died would never report; a caller that unwound would free `r` under the
/// helpers): the share bounds cannot overflow (for fewer than 2^32 members), and a task's panic payload is
/// forgotten, not dropped (its `Drop` could panic again).
fn work(r: &Region, s: &Shared, m: usize, members: usize) {
    for i in share_start(r.n, m, members)..share_start(r.n, m + 1, members) {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| (r.f)(i))) {
            std::mem::forget(payload);
            s.done.panicked.store(true, SeqCst);
        }
    }
}

/// Where member `m` of `members` starts on `n` tasks, `⌊n·m / members⌋`, without forming `n·m`:
/// `(n mod members)·m < members²` (`m ≤ members`).
fn share_start(n: usize, m: usize, members: usize) -> usize {
    n / members * m + n % members * m / members
}

/// A helper thread: spins on the region counter while a forward holds the team (and [`GRACE`] after), else parks.
fn helper(s: &Shared, m: usize, members: usize) {
    let (mut last, mut idle) = (0, None::<Instant>);
    loop {
        if !s.live.load(SeqCst) {
            let since = *idle.get_or_insert_with(Instant::now);
            if since.elapsed() > GRACE {
                let mut g = s.park.lock().unwrap_or_else(|e| e.into_inner());
                while !s.live.load(SeqCst) {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                idle = None;
            }
        } else {
            idle = None;
        }
        let e = s.publish.epoch.load(SeqCst);
        if e != last {
            last = e;
            // SAFETY: region `e` is open until this helper reports done: the caller's `region`, which owns the
            // `Region` behind `job`, waits for every helper's report before it returns.
            let r = unsafe { &*(s.publish.job.load(SeqCst) as *const Region) };
            work(r, s, m, members);
            s.done.helpers.fetch_add(1, SeqCst);
        }
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool's threads less one, at least one: the size every forward of the test process asks for.
    fn helpers() -> usize {
        rayon::current_num_threads().max(2) - 1
    }

    /// On the team, every item is visited exactly once, region after region (1 to 40 items, fewer and more than
    /// the members), a loop inside a task runs (on rayon), and off the team the same loops give the same.
    #[test]
    fn every_item_once() {
        let check = || {
            for n in (1..40).chain([200]) {
                for round in 0..20u32 {
                    let mut v = vec![0u32; n];
                    for_each_mut(&mut v, |i, x| *x += i as u32 * 3 + round);
                    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32 * 3 + round), "{n} items: {v:?}");
                }
                let mut outer = vec![vec![0u8; 5]; n];
                for_each_mut(&mut outer, |_, inner| for_each_mut(inner, |j, x| *x = j as u8 + 1));
                assert!(outer.iter().all(|v| v == &[1, 2, 3, 4, 5]));
            }
        };
        run_waiting(helpers(), || {
            assert!(holds());
            check();
        });
        check();
    }

    /// The shares' bounds equal `⌊n·m / members⌋` computed wide, up to `n = usize::MAX`, and so cover every task
    /// once.
    #[test]
    fn shares_split_exactly() {
        for n in (0..300).chain([usize::MAX / 3, usize::MAX - 1, usize::MAX]) {
            for members in 1..40 {
                for m in 0..=members {
                    let want = (n as u128 * m as u128 / members as u128) as usize;
                    assert_eq!(share_start(n, m, members), want, "n {n}, member {m} of {members}");
                }
            }
        }
    }

    /// A forward that panics while it holds the team leaves it usable by the next one.
    #[test]
    fn a_panicking_forward_leaves_the_team_usable() {
        let caught = catch_unwind(|| run_waiting(helpers(), || panic!("the forward fails")));
        assert!(caught.is_err());
        // `run` itself (not `run_waiting`, which waits through poison anyway); another test may hold the team for a
        // moment, so a few tries.
        let held = (0..1000).any(|_| {
            run(helpers(), holds) || {
                std::thread::sleep(Duration::from_millis(1));
                false
            }
        });
        assert!(held, "the team stayed off after a panic");
    }

    /// A task's panic reaches the caller of the loop, and the team serves the next loop.
    #[test]
    fn a_panic_reaches_the_caller() {
        run_waiting(helpers(), || {
            assert!(holds());
            let mut v = vec![0u32; 16];
            let caught = catch_unwind(AssertUnwindSafe(|| for_each_mut(&mut v, |i, _| assert!(i != 13, "task 13"))));
            assert!(caught.is_err(), "the panic was lost");
            for_each_mut(&mut v, |i, x| *x = i as u32);
            assert!(v.iter().enumerate().all(|(i, &x)| x == i as u32));
        });
    }
}
