//! For tests, two global allocators. `Watching` looks at every block as it is freed, while
//! asked to, for given byte strings (the hex of a test key): a buffer that grew (each growth
//! frees the old copy) or one that is not wiped on drop shows up in the count. `Counting`
//! counts the allocations one thread makes while asked to. In a test binary:
//! `#[global_allocator] static A: wgmesh_leakcheck::Watching = wgmesh_leakcheck::Watching;`

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

static WATCH: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicUsize = AtomicUsize::new(0);
static MARKS: AtomicPtr<&'static [u8]> = AtomicPtr::new(std::ptr::null_mut());
static MARKS_LEN: AtomicUsize = AtomicUsize::new(0);
/// Tests that watch run one at a time: another test's setup builds key text of its own.
static SERIAL: Mutex<()> = Mutex::new(());

/// Hold this for the whole test, setup included (see [`SERIAL`]).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Freed blocks holding any of `marks` while `f` ran (in any thread of the process). Call it
/// under [`serial`].
pub fn leaks_during(marks: &'static [&'static [u8]], f: impl FnOnce()) -> usize {
    MARKS.store(marks.as_ptr().cast_mut(), Ordering::SeqCst);
    MARKS_LEN.store(marks.len(), Ordering::SeqCst);
    FOUND.store(0, Ordering::SeqCst);
    WATCH.store(true, Ordering::SeqCst);
    f();
    WATCH.store(false, Ordering::SeqCst);
    FOUND.load(Ordering::SeqCst)
}

pub struct Watching;

// SAFETY: every call is passed on to the system allocator unchanged; dealloc only reads the
// block it is handed, which is still allocated at that point, and the 'static marks.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if WATCH.load(Ordering::SeqCst) {
            let block = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            let marks = MARKS.load(Ordering::SeqCst);
            let marks: &[&[u8]] = if marks.is_null() {
                &[]
            } else {
                unsafe { std::slice::from_raw_parts(marks, MARKS_LEN.load(Ordering::SeqCst)) }
            };
            if marks.iter().any(|m| contains(block, m)) {
                FOUND.fetch_add(1, Ordering::SeqCst);
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
}

thread_local! {
    // const and without Drop: native TLS, so the allocator never allocates to reach it.
    static ALLOCATIONS: Cell<Option<usize>> = const { Cell::new(None) };
}

fn count_one() {
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get().map(|n| n + 1)));
}

/// `f`'s result and the allocations (and reallocations) it made on this thread; tests on other
/// threads are not counted.
pub fn allocations<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCATIONS.with(|c| c.set(Some(0)));
    let r = f();
    (r, ALLOCATIONS.with(|c| c.replace(None)).unwrap_or(0))
}

pub struct Counting;

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count_one();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_one();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}
