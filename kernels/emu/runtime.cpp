// The CPU emulator's scheduler and launcher (see cuda_emu.h for the execution model).
//
// A launch hands its blocks out, in order, to a few OS workers: the launching thread and helper threads of a
// pool that lives for the process. A worker runs one block at a time with one fibre per CUDA thread (64 KiB
// stacks below PROT_NONE guard pages, reused across blocks and launches). Fibres switch only at barriers,
// warp collectives and exit, so barrier bookkeeping is plain data and a barrier that can never complete is
// detected exactly: the launch ends with an error, never a hang.
//
// The schedule is adversarial and reproducible (INSTAGEN_EMU_SEED, see instagen_emu_seed): at the start of
// every barrier interval the warps of the block are put in a fresh random order and, in most intervals, the
// first warp with a runnable lane always runs, so one warp runs ahead to the next barrier before the others
// start; in the other intervals every switch picks a random runnable warp. A cp.async copy lands at a random
// moment between its issue and the covering wait (at once, after a few of its thread's switches, or at the
// wait). Static __shared__ arrays are per-worker guarded buffers poisoned (0xFF bytes) in every block, like
// dynamic shared memory.
//
// Race check (launches of the instrumented copies, instagen_emu_run with INSTAGEN_EMU_RACECHECK): every
// shared-memory access of a kernel reaches the __tsan_* hooks below; per shared byte the last writer and the
// readers since the last barrier are kept, and an access from another warp with no __syncthreads in between
// (read after write, write after read, write after write; a cp.async write spans issue to covering wait) ends
// the launch with an error naming both sites. Accesses of one warp are never reported, nor are atomics.
//
// Faults: while a fibre runs, SIGSEGV/SIGBUS (guard.cpp's handler, on an alternate signal stack) end the
// launch with an error via siglongjmp back to the worker; the message names guard pages of guarded buffers
// (guard.cpp) and of fibre stacks.
#undef _FORTIFY_SOURCE   // __longjmp_chk would refuse the jump from a fibre stack

// System headers first: cuda_emu.h defines CUDA keywords (__noinline__, ...) that libstdc++ also spells.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <csetjmp>
#include <csignal>
#include <cstdarg>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <dlfcn.h>
#include <elf.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

// x86-64 ELF switches contexts with the few instructions below; elsewhere (or with -DINSTAGEN_EMU_UCONTEXT)
// with ucontext, which costs a signal-mask system call per switch.
#if defined(__x86_64__) && defined(__ELF__) && !defined(INSTAGEN_EMU_UCONTEXT)
#define INSTAGEN_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#include "cuda_emu.h"

__thread instagen_emu_thread* instagen_emu_self;
__thread const instagen_emu_block* instagen_emu_blk;

namespace {

constexpr unsigned kMaxThreads = 1024;           // per block
constexpr std::size_t kStackBytes = 64 * 1024;   // per fibre
constexpr std::size_t kAltStackBytes = 64 * 1024;
constexpr unsigned kMaxSmem = 227 * 1024;        // dynamic shared memory per block (as on sm_90)
constexpr unsigned kMaxPending = 32;             // cp.async copies in flight per thread
constexpr unsigned kMaxWorkers = 64;
constexpr unsigned kUncommitted = ~0u;
constexpr unsigned kAtWait = ~0u;                // Pending::due of a copy that lands at the covering wait
constexpr unsigned kNoWait = ~0u;
constexpr unsigned short kNoWarp = 0xffffu;

std::size_t page_bytes() {
    static const std::size_t p = (std::size_t)sysconf(_SC_PAGESIZE);
    return p;
}

// ---- execution contexts -----------------------------------------------------------------------------------

[[noreturn]] void fiber_main();

#ifdef INSTAGEN_EMU_ASM_SWITCH
// Saves the callee-saved registers on the current stack, stores the stack pointer in *save_sp, switches to
// load_sp and restores the registers from there. MXCSR and the x87 control word are not switched: neither
// kernels nor the runtime change rounding modes.
extern "C" void instagen_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl instagen_emu_switch
    .hidden instagen_emu_switch
    .type instagen_emu_switch, @function
    .p2align 4
instagen_emu_switch:
    pushq %rbp; pushq %rbx; pushq %r12; pushq %r13; pushq %r14; pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15; popq %r14; popq %r13; popq %r12; popq %rbx; popq %rbp
    ret
    .size instagen_emu_switch, .-instagen_emu_switch
)");
struct Ctx { void* sp; };
// A frame that instagen_emu_switch "returns" from into fiber_main, with the stack aligned as at a call.
void ctx_make(Ctx& c, unsigned char* lo, std::size_t size) {
    const std::uintptr_t top = reinterpret_cast<std::uintptr_t>(lo + size) & ~std::uintptr_t(15);
    auto* sp = reinterpret_cast<std::uint64_t*>(top - 64);   // 6 registers, then the "return" address
    for (int i = 0; i < 6; ++i) sp[i] = 0;
    sp[6] = reinterpret_cast<std::uint64_t>(&fiber_main);    // entered with rsp = top - 8, as after a call
    sp[7] = 0;
    c.sp = sp;
}
void ctx_switch(Ctx& from, Ctx& to) { instagen_emu_switch(&from.sp, to.sp); }
#else
struct Ctx { ucontext_t uc; };
void ctx_make(Ctx& c, unsigned char* lo, std::size_t size) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = lo;
    c.uc.uc_stack.ss_size = size;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, reinterpret_cast<void (*)()>(&fiber_main), 0);
}
void ctx_switch(Ctx& from, Ctx& to) { swapcontext(&from.uc, &to.uc); }
#endif

// ---- state ------------------------------------------------------------------------------------------------

enum State : unsigned char { kReady, kAtBarrier, kAtWarp, kDone };

struct Pending {   // one cp.async copy in flight
    void* dst;
    unsigned group;
    unsigned due;           // switches of its thread until it lands (0: landed), or kAtWait
    unsigned issue_epoch;   // barrier interval it was issued in (race check)
    const char* file;
    int line;
    unsigned char data[16];
};

// Where a shared-memory access happened: a return address into kernel code (symbolised when reported) or a
// known file:line.
struct Site {
    std::uintptr_t pc;
    const char* file;
    int line;
};

// Race-check state of one shared byte; valid only while `block` is the worker's current block serial.
struct Shadow {
    unsigned block;
    unsigned wepoch;    // barrier interval of the last write
    unsigned repoch;    // barrier interval of the reads in `rwarps`
    unsigned rwarps;    // warps that read it in `repoch`
    unsigned short wwarp, rwarp;   // last writer, last reader
    bool inflight;      // written by a cp.async its thread has not waited for yet
    Site wsite, rsite;
};

// A static __shared__ array of this worker (build/emu.rs turns declarations into instagen_emu_static_smem
// calls); poisoned the first time a block reaches its declaration.
struct StaticVar {
    const void* key;
    unsigned char* p;
    std::size_t bytes;
    unsigned block;
    std::vector<Shadow> shadow;
};

struct Race {   // the first race of a block, formatted after the block ends
    bool found;
    const char* kind;
    unsigned warp, other;
    unsigned bytes;
    std::size_t offset, region_bytes;
    bool dynamic;
    uint3 thread;
    Site site, other_site;
    const char* sync_what;
    const char* sync_file;
    int sync_line;
};

struct Fiber {
    instagen_emu_thread t;   // first member: lanes handed to completions convert back to Fiber*
    Ctx ctx;
    unsigned char* stack;
    State state;
    int kind;
    unsigned mask;
    instagen_emu_complete complete;
    const char* what;   // where the thread waits (or last synchronised), for messages
    const char* file;
    int line;
    unsigned npending, committed;
    Pending pending[kMaxPending];   // oldest first
    void at(const char* w, const char* f, int l) { what = w, file = f, line = l; }
};

struct Launch {
    const char* kernel;
    instagen_emu_entry entry;
    void** args;
    dim3 grid, block;
    unsigned smem, nthreads;
    unsigned long long nblocks;
    bool checked;         // the race-check (instrumented) copy of the kernel
    std::uint64_t seed;   // of the schedule, mixed with the kernel name
    Launch(const instagen_emu_dims* d, const char* k, instagen_emu_entry e, void** a, bool c, std::uint64_t s)
        : kernel(k), entry(e), args(a), grid(d->grid[0], d->grid[1], d->grid[2]),
          block(d->block[0], d->block[1], d->block[2]), smem(d->smem_bytes), nthreads(block.x * block.y * block.z),
          nblocks((unsigned long long)grid.x * grid.y * grid.z), checked(c), seed(s) {
        for (const char* c = k; *c; ++c) seed = (seed ^ (unsigned char)*c) * 0x100000001b3ull;   // FNV-1a
    }
    std::atomic<unsigned long long> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::string error;   // of the lowest-numbered failing block
    unsigned long long error_block = ~0ull;
    void fail(const char* msg, unsigned long long b) {
        std::lock_guard<std::mutex> lk(mu);
        failed.store(true);
        if (b < error_block) error_block = b, error = msg;
    }
};

struct Arena {   // fibre stacks, each above its guard page
    unsigned char* base;
    std::size_t bytes;
};

struct Worker {
    unsigned index = 0;
    std::unique_ptr<Fiber[]> fibers{new Fiber[kMaxThreads]()};
    unsigned nstacks = 0;   // fibers [0, nstacks) have a stack
    std::vector<Arena> arenas;
    unsigned char* altstack = nullptr;
    unsigned char* smem = nullptr;   // dynamic shared memory, ending at a guard page
    unsigned smem_bytes = 0;
    Ctx sched{};
    Fiber* cur = nullptr;
    Launch* launch = nullptr;
    instagen_emu_block blk{};
    unsigned long long block = 0;   // linear index of the running block
    unsigned nthreads = 0, nwarps = 0, bar_count = 0, done = 0;
    unsigned warp_wait[kMaxThreads / 32] = {};   // lanes waiting at a warp collective
    unsigned warp_done[kMaxThreads / 32] = {};   // lanes that have exited
    // The schedule: runnable lanes per warp, warps with a runnable lane, this interval's warp order.
    unsigned ready[kMaxThreads / 32] = {}, ready_warps = 0;
    unsigned char order[kMaxThreads / 32] = {};
    bool random_picks = false;   // this interval: a random runnable warp at every switch
    std::uint64_t rng = 0;
    unsigned epoch = 0;    // barrier intervals completed in this block
    unsigned serial = 0;   // of the running block on this worker (static __shared__ poisoning, shadows)
    std::vector<StaticVar> vars;          // every static __shared__ array this worker has used
    std::vector<StaticVar*> active;       // those of the running block
    bool checked = false;
    std::vector<Shadow> dyn_shadow;       // race check of dynamic shared memory
    Race race{};
    bool failed = false;
    char msg[1024] = {};
    sigjmp_buf jb;

    Fiber& fiber(unsigned linear) { return fibers[linear]; }
    void make_ready(unsigned i) {
        ready[i / 32] |= 1u << (i % 32);
        ready_warps |= 1u << (i / 32);
    }
    std::uint64_t next_random() {   // splitmix64
        std::uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
    }
    unsigned present(unsigned warp) const {   // lanes that exist in `warp` of this block
        const unsigned left = nthreads - warp * 32;
        return left >= 32 ? ~0u : (1u << left) - 1u;
    }
};

__thread Worker* tls_worker;
__thread bool tls_in_kernel;
thread_local std::string tls_error;

// ---- messages ---------------------------------------------------------------------------------------------

struct Msg {   // appends to a fixed buffer, truncating (usable in the signal handler)
    char* buf;
    std::size_t cap, len = 0;
    Msg(char* b, std::size_t c) : buf(b), cap(c) { buf[0] = 0; }
    void vadd(const char* fmt, va_list ap) {
        if (len + 1 >= cap) return;
        const int n = std::vsnprintf(buf + len, cap - len, fmt, ap);
        if (n > 0) len = std::min(cap - 1, len + (std::size_t)n);
    }
    __attribute__((format(printf, 2, 3))) void add(const char* fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vadd(fmt, ap);
        va_end(ap);
    }
    void lanes(unsigned bits) {   // "0-3,5,8-31"
        const char* sep = "";
        for (unsigned l = 0; l < 32; ++l) {
            if (!(bits >> l & 1u)) continue;
            const unsigned first = l;
            while (l + 1 < 32 && (bits >> (l + 1) & 1u)) ++l;
            if (first == l) add("%s%u", sep, l);
            else add("%s%u-%u", sep, first, l);
            sep = ",";
        }
    }
};

// "kernel K, block (x,y,z)[, thread (x,y,z)]: "
Msg block_msg(Worker& w, const Fiber* f) {
    Msg m(w.msg, sizeof w.msg);
    const uint3 b = w.blk.block_idx;
    m.add("kernel %s, block (%u,%u,%u)", w.launch ? w.launch->kernel : "?", b.x, b.y, b.z);
    if (f) m.add(", thread (%u,%u,%u)", f->t.thread_idx.x, f->t.thread_idx.y, f->t.thread_idx.z);
    m.add(": ");
    return m;
}

// Ends the block from inside a fibre: records the error and leaves the fibre for good.
[[noreturn]] __attribute__((format(printf, 2, 3))) void fiber_fail(Worker& w, const char* fmt, ...) {
    Fiber& f = *w.cur;
    Msg m = block_msg(w, &f);
    va_list ap;
    va_start(ap, fmt);
    m.vadd(fmt, ap);
    va_end(ap);
    w.failed = true;
    ctx_switch(f.ctx, w.sched);
    std::abort();   // a failed fibre is never resumed
}

bool same_site(const Fiber& a, const Fiber& b) {
    return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

void describe_waiter(Msg& m, const Fiber& g) {
    switch (g.state) {
    case kDone: m.add("has exited"); break;
    case kAtBarrier: m.add("waits at __syncthreads (%s:%d)", g.file, g.line); break;
    case kAtWarp: m.add("waits at %s (%s:%d, mask 0x%08x)", g.what, g.file, g.line, g.mask); break;
    case kReady: m.add("is runnable"); break;
    }
}

// Called when no fibre can run but some have not exited.
void diagnose_deadlock(Worker& w) {
    Msg m = block_msg(w, nullptr);
    m.add("deadlock:");
    for (unsigned i = 0; w.bar_count && i < w.nthreads; ++i) {
        const Fiber& g = w.fiber(i);
        if (g.state != kAtBarrier) continue;
        m.add(" %u of %u threads wait at __syncthreads (%s:%d);", w.bar_count, w.nthreads, g.file, g.line);
        break;
    }
    unsigned reported = 0;
    for (unsigned warp = 0; warp * 32 < w.nthreads && reported < 2; ++warp) {
        const unsigned waiting = w.warp_wait[warp];
        if (!waiting) continue;
        const Fiber& f = w.fiber(warp * 32 + (unsigned)__builtin_ctz(waiting));
        m.add(" warp %u: lanes ", warp);
        m.lanes(waiting);
        m.add(" wait at %s (%s:%d, mask 0x%08x)", f.what, f.file, f.line, f.mask);
        const unsigned missing = f.mask & ~waiting;
        if (missing) {
            const unsigned l = (unsigned)__builtin_ctz(missing);
            m.add(" but lane %u ", l);
            describe_waiter(m, w.fiber(warp * 32 + l));
        }
        m.add(";");
        ++reported;
    }
    if (w.done) m.add(" %u threads exited", w.done);
    w.failed = true;
}

// ---- race check -------------------------------------------------------------------------------------------

struct Region {   // shared memory of the running block that holds an address
    unsigned char* base;
    std::size_t bytes;
    Shadow* shadow;
    bool dynamic;
};

bool region_of(Worker& w, std::uintptr_t a, Region& r) {
    if (w.smem && a - reinterpret_cast<std::uintptr_t>(w.smem) < w.smem_bytes) {
        r = Region{w.smem, w.smem_bytes, w.dyn_shadow.data(), true};
        return true;
    }
    for (StaticVar* v : w.active) {
        if (a - reinterpret_cast<std::uintptr_t>(v->p) < v->bytes) {
            r = Region{v->p, v->bytes, v->shadow.data(), false};
            return true;
        }
    }
    return false;
}

Shadow& shadow_at(Worker& w, const Region& r, std::size_t i) {
    Shadow& s = r.shadow[i];
    if (s.block != w.serial) {
        s = Shadow{};
        s.block = w.serial;
        s.wwarp = s.rwarp = kNoWarp;
    }
    return s;
}

// Ends the block with the race (formatted by format_race once the block has ended).
[[noreturn]] void report_race(Worker& w, const char* kind, unsigned other, Site here, Site there, const Region& r,
                              std::uintptr_t a, unsigned bytes) {
    const Fiber& f = *w.cur;
    w.race = Race{true,   kind,    f.t.linear / 32, other,  bytes,  a - reinterpret_cast<std::uintptr_t>(r.base),
                  r.bytes, r.dynamic, f.t.thread_idx, here, there, f.what, f.file, f.line};
    fiber_fail(w, "shared-memory race");
}

// The running thread reads or writes n bytes at p (ignored unless p is shared memory of the block).
void shared_access(Worker& w, const void* p, std::size_t n, bool write, Site site) {
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p);
    Region r;
    if (!region_of(w, a, r)) return;
    const std::size_t off = a - reinterpret_cast<std::uintptr_t>(r.base), end = std::min(r.bytes, off + n);
    const unsigned warp = w.cur->t.linear / 32, bit = 1u << warp, ep = w.epoch;
    for (std::size_t i = off; i < end; ++i) {
        Shadow& s = shadow_at(w, r, i);
        if (s.wwarp != kNoWarp && s.wwarp != warp && (s.wepoch == ep || s.inflight)) {
            report_race(w, write ? "write after write" : "read after write", s.wwarp, site, s.wsite, r, a, (unsigned)n);
        }
        if (write) {
            if (s.repoch == ep && (s.rwarps & ~bit)) {
                const bool known = s.rwarp != warp;
                report_race(w, "write after read", known ? s.rwarp : (unsigned)__builtin_ctz(s.rwarps & ~bit), site,
                            known ? s.rsite : Site{}, r, a, (unsigned)n);
            }
            s.wwarp = (unsigned short)warp, s.wepoch = ep, s.wsite = site, s.inflight = false;
        } else {
            if (s.repoch != ep) s.rwarps = 0, s.repoch = ep;
            s.rwarps |= bit, s.rwarp = (unsigned short)warp, s.rsite = site;
        }
    }
}

// A cp.async copy of the running thread lands: a write that may overlap anything since its issue.
void async_write(Worker& w, const Pending& p) {
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p.dst);
    Region r;
    if (!region_of(w, a, r)) return;
    const std::size_t off = a - reinterpret_cast<std::uintptr_t>(r.base), end = std::min(r.bytes, off + 16);
    const unsigned warp = w.cur->t.linear / 32, bit = 1u << warp;
    const Site site{0, p.file, p.line};
    for (std::size_t i = off; i < end; ++i) {
        Shadow& s = shadow_at(w, r, i);
        if (s.wwarp != kNoWarp && s.wwarp != warp && (s.wepoch >= p.issue_epoch || s.inflight)) {
            report_race(w, "cp.async write after write", s.wwarp, site, s.wsite, r, a, 16);
        }
        if (s.repoch >= p.issue_epoch && (s.rwarps & ~bit)) {
            const bool known = s.rwarp != warp;
            report_race(w, "cp.async write after read", known ? s.rwarp : (unsigned)__builtin_ctz(s.rwarps & ~bit),
                        site, known ? s.rsite : Site{}, r, a, 16);
        }
        s.wwarp = (unsigned short)warp, s.wepoch = w.epoch, s.wsite = site, s.inflight = true;
    }
}

// The running thread's wait covers a landed copy: from now on it is an ordinary write of this interval.
void async_done(Worker& w, const Pending& p) {
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(p.dst);
    Region r;
    if (!region_of(w, a, r)) return;
    const std::size_t off = a - reinterpret_cast<std::uintptr_t>(r.base), end = std::min(r.bytes, off + 16);
    const unsigned warp = w.cur->t.linear / 32;
    for (std::size_t i = off; i < end; ++i) {
        Shadow& s = shadow_at(w, r, i);
        if (s.inflight && s.wwarp == warp) s.inflight = false, s.wepoch = w.epoch;
    }
}

// "kernels/x.cu:123" for a return address into kernel code (the innermost inlined frame in a kernels/*.cu,
// else the innermost outside kernels/emu/), via addr2line; false if that fails.
bool symbolise(std::uintptr_t pc, char* out, std::size_t cap) {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void*>(pc), &info) || !info.dli_fbase) return false;
    std::uintptr_t addr = pc - 1;   // inside the call instruction
    if (reinterpret_cast<const Elf64_Ehdr*>(info.dli_fbase)->e_type == ET_DYN) {
        addr -= reinterpret_cast<std::uintptr_t>(info.dli_fbase);
    }
    const bool main_program = !info.dli_fname || !*info.dli_fname || dlopen(nullptr, RTLD_LAZY | RTLD_NOLOAD) ==
                                                                          dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    const std::string object = main_program ? "/proc/self/exe" : info.dli_fname;
    if (object.find('\'') != std::string::npos) return false;
    char cmd[600];
    std::snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%llx 2>/dev/null", object.c_str(),
                  (unsigned long long)addr);
    FILE* pipe = popen(cmd, "r");
    if (!pipe) return false;
    std::string best, fallback;
    char line[1024];
    for (int i = 0; std::fgets(line, sizeof line, pipe); ++i) {
        if (i % 2 == 0) continue;   // function names
        std::string loc(line);
        loc = loc.substr(0, loc.find_first_of(" \n"));
        if (loc.empty() || loc[0] == '?') continue;
        if (best.empty() && loc.find(".cu:") != std::string::npos) best = loc;
        if (fallback.empty() && loc.find("/emu/") == std::string::npos) fallback = loc;
    }
    pclose(pipe);
    if (best.empty()) best = fallback;
    if (best.empty()) return false;
    const std::size_t k = best.rfind("/kernels/");   // kernels/x.cu, as the other messages say
    std::snprintf(out, cap, "%s", best.c_str() + (k == std::string::npos ? 0 : k + 1));
    return true;
}

void add_site(Msg& m, const Site& s) {
    char buf[512];
    if (s.pc && symbolise(s.pc, buf, sizeof buf)) m.add("%s", buf);
    else if (s.pc) m.add("pc %p (addr2line could not name it)", reinterpret_cast<void*>(s.pc));
    else if (s.file) m.add("%s:%d", s.file, s.line);
    else m.add("an unrecorded site");
}

void format_race(Worker& w) {
    const Race& r = w.race;
    Msg m = block_msg(w, nullptr);
    m.add("shared-memory race (%s) with no __syncthreads between: warp %u (thread (%u,%u,%u)) at ", r.kind, r.warp,
          r.thread.x, r.thread.y, r.thread.z);
    add_site(m, r.site);
    m.add(", warp %u at ", r.other);
    add_site(m, r.other_site);
    m.add("; %u bytes at offset %zu of %s (%zu bytes)", r.bytes, r.offset,
          r.dynamic ? "dynamic shared memory" : "a static __shared__ array", r.region_bytes);
    if (r.sync_line) m.add("; warp %u last synchronised at %s (%s:%d)", r.warp, r.sync_what, r.sync_file, r.sync_line);
}

// ---- fibres, barriers, collectives ------------------------------------------------------------------------

void land_copy(Worker& w, Fiber& f, Pending& p) {
    std::memcpy(p.dst, p.data, 16);
    p.due = 0;
    if (w.checked) async_write(w, p);
}

// Completes the copies covered by a wait that leaves `allowed` committed groups in flight (none for
// kNoWait), landing them first, and forgets them and (unless checked) the copies that have landed.
void retire(Worker& w, Fiber& f, unsigned allowed) {
    unsigned kept = 0;
    for (unsigned i = 0; i < f.npending; ++i) {
        Pending& p = f.pending[i];
        const bool cover = allowed != kNoWait && p.group != kUncommitted && p.group + allowed < f.committed;
        if (cover && p.due) land_copy(w, f, p);
        if (cover && w.checked) async_done(w, p);
        if (!cover && (p.due || w.checked)) f.pending[kept++] = p;   // checked: landed copies stay in flight
    }
    f.npending = kept;
}

// Every switch away from a fibre is a moment its in-flight copies may land at.
void yield(Worker& w, Fiber& f) {
    bool landed = false;
    for (unsigned i = 0; i < f.npending; ++i) {
        Pending& p = f.pending[i];
        if (p.due && p.due != kAtWait && --p.due == 0) land_copy(w, f, p), landed = true;
    }
    if (landed) retire(w, f, kNoWait);
    ctx_switch(f.ctx, w.sched);
}

// A new barrier interval: a fresh warp order, and whether switches follow it or pick warps at random.
void new_interval(Worker& w) {
    for (unsigned i = 0; i < w.nwarps; ++i) w.order[i] = (unsigned char)i;
    for (unsigned i = w.nwarps; i > 1; --i) std::swap(w.order[i - 1], w.order[w.next_random() % i]);
    w.random_picks = w.next_random() % 4 == 0;
}

// The next fibre to run (taken off the runnable set), or -1 if none can run.
int pick(Worker& w) {
    if (!w.ready_warps) return -1;
    unsigned warp = 0;
    if (w.random_picks) {
        unsigned bits = w.ready_warps;
        for (unsigned k = (unsigned)(w.next_random() % (unsigned)__builtin_popcount(bits)); k; --k) bits &= bits - 1;
        warp = (unsigned)__builtin_ctz(bits);
    } else {
        for (unsigned i = 0; !(w.ready_warps >> (warp = w.order[i]) & 1u); ++i) {
        }
    }
    const unsigned lane = (unsigned)__builtin_ctz(w.ready[warp]);
    w.ready[warp] &= w.ready[warp] - 1;
    if (!w.ready[warp]) w.ready_warps &= ~(1u << warp);
    return (int)(warp * 32 + lane);
}

[[noreturn]] void fiber_main() {
    Worker& w = *tls_worker;
    w.launch->entry(w.launch->args);
    Fiber& f = *w.cur;
    f.state = kDone;
    f.npending = 0;   // copies never waited for die with the thread
    ++w.done;
    w.warp_done[f.t.linear / 32] |= 1u << f.t.lane;
    if (w.bar_count) {
        for (unsigned i = 0; i < w.nthreads; ++i) {
            const Fiber& g = w.fiber(i);
            if (g.state == kAtBarrier) {
                fiber_fail(w, "exited while %u of %u threads wait at __syncthreads (%s:%d) (divergent barrier)",
                           w.bar_count, w.nthreads, g.file, g.line);
            }
        }
    }
    const unsigned warp = f.t.linear / 32, waiting = w.warp_wait[warp];
    for (unsigned l = 0; l < 32; ++l) {
        const Fiber& g = w.fiber(warp * 32 + l);
        if ((waiting >> l & 1u) && (g.mask >> f.t.lane & 1u)) {
            fiber_fail(w, "exited (lane %u) while lane %u waits for it at %s (%s:%d, mask 0x%08x)", f.t.lane, l,
                       g.what, g.file, g.line, g.mask);
        }
    }
    ctx_switch(f.ctx, w.sched);
    std::abort();
}

unsigned char* map_bytes(std::size_t bytes) {
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    return m == MAP_FAILED ? nullptr : static_cast<unsigned char*>(m);
}

// ---- workers and launches ---------------------------------------------------------------------------------

bool ensure_stacks(Worker& w, unsigned n) {
    if (n <= w.nstacks) return true;
    const std::size_t page = page_bytes(), slot = kStackBytes + page;
    const unsigned want = std::min(kMaxThreads, (n + 127) / 128 * 128), count = want - w.nstacks;
    unsigned char* m = map_bytes(slot * count);
    if (!m) return false;
    for (unsigned i = 0; i < count; ++i) {
        mprotect(m + i * slot, page, PROT_NONE);
        w.fiber(w.nstacks + i).stack = m + i * slot + page;
    }
    w.arenas.push_back(Arena{m, slot * count});
    w.nstacks = want;
    return true;
}

// Runs block `b` of the current launch to completion; false (with w.msg) on error.
bool run_block(Worker& w, unsigned long long b) {
    const Launch& L = *w.launch;
    w.blk.block_idx = uint3{unsigned(b % L.grid.x), unsigned(b / L.grid.x % L.grid.y),
                            unsigned(b / L.grid.x / L.grid.y)};
    if (L.smem) std::memset(w.smem, 0xff, L.smem);   // poison: uninitialised reads show as NaN
    const unsigned n = L.nthreads, bx = L.block.x, bxy = L.block.x * L.block.y;
    w.nthreads = n;
    w.nwarps = (n + 31) / 32;
    w.bar_count = w.done = 0;
    w.failed = false;
    w.race.found = false;
    std::memset(w.warp_wait, 0, sizeof w.warp_wait);
    std::memset(w.warp_done, 0, sizeof w.warp_done);
    std::memset(w.ready, 0, sizeof w.ready);
    w.ready_warps = 0;
    if (++w.serial == 0) ++w.serial;   // 0 marks shadows and arrays never used
    w.epoch = 0;
    w.active.clear();
    w.rng = L.seed ^ (b * 0xd1b54a32d192ed03ull);
    new_interval(w);
    for (unsigned i = 0; i < n; ++i) {
        Fiber& f = w.fiber(i);
        f.t.thread_idx = uint3{i % bx, i % bxy / bx, i / bxy};
        f.t.linear = i;
        f.t.lane = i % 32;
        f.state = kReady;
        f.at("start", "?", 0);
        f.npending = f.committed = 0;
        ctx_make(f.ctx, f.stack, kStackBytes);
        w.make_ready(i);
    }
    for (int next; (next = pick(w)) >= 0;) {
        Fiber& f = w.fiber((unsigned)next);
        w.cur = &f;
        instagen_emu_self = &f.t;
        ctx_switch(w.sched, f.ctx);
        w.cur = nullptr;
        if (w.failed) return false;
    }
    if (w.done == n) return true;
    diagnose_deadlock(w);
    return false;
}

void run_worker(Worker& w, Launch& L) {
    tls_worker = &w;
    w.launch = &L;
    if (L.smem != w.smem_bytes) {   // exactly this size, so that overruns fault
        instagen_emu_free_guarded(w.smem);
        w.smem = L.smem ? static_cast<unsigned char*>(instagen_emu_alloc_guarded(L.smem, 16)) : nullptr;
        w.smem_bytes = w.smem ? L.smem : 0;
    }
    w.checked = L.checked;
    if (L.checked && w.dyn_shadow.size() < L.smem) w.dyn_shadow.resize(L.smem);
    if (!w.altstack) w.altstack = map_bytes(kAltStackBytes);
    if ((L.smem && !w.smem) || !w.altstack || !ensure_stacks(w, L.nthreads)) {
        L.fail("out of memory for fibre stacks or shared memory", 0);
        tls_worker = nullptr;
        return;
    }
    w.blk = instagen_emu_block{L.grid, L.block, uint3{0, 0, 0}, L.smem ? w.smem : nullptr, L.smem};
    instagen_emu_blk = &w.blk;
    stack_t alt{}, old{};
    alt.ss_sp = w.altstack;
    alt.ss_size = kAltStackBytes;
    sigaltstack(&alt, &old);
    tls_in_kernel = true;
    if (sigsetjmp(w.jb, 1) == 0) {
        while (!L.failed.load(std::memory_order_relaxed)) {
            w.block = L.next.fetch_add(1, std::memory_order_relaxed);
            if (w.block >= L.nblocks) break;
            if (!run_block(w, w.block)) {
                if (w.race.found) format_race(w);
                L.fail(w.msg, w.block);
                break;
            }
        }
    } else {
        L.fail(w.msg, w.block);   // a fault in a kernel thread, described by the signal handler
    }
    tls_in_kernel = false;
    sigaltstack(&old, nullptr);
    w.cur = nullptr, instagen_emu_self = nullptr, instagen_emu_blk = nullptr, tls_worker = nullptr;
}

struct Pool {
    std::mutex launch_mu;   // one launch at a time
    std::mutex mu;
    std::condition_variable wake, idle;
    std::vector<std::unique_ptr<Worker>> workers;   // workers[0] runs on the launching thread
    unsigned setting = 0;                           // 0: not decided yet
    bool seeded = false;
    std::uint64_t seed = 0;
    Launch* job = nullptr;
    unsigned job_workers = 0, busy = 0;
    unsigned long long generation = 0;
};
Pool& pool() {
    static Pool* p = new Pool;   // never destroyed: helper threads may outlive static destructors
    return *p;
}

unsigned default_workers() {
    if (const char* env = std::getenv("INSTAGEN_EMU_WORKERS")) {
        const long n = std::strtol(env, nullptr, 10);
        if (n >= 1 && n <= (long)kMaxWorkers) return (unsigned)n;
    }
    return std::max(1u, std::min(2u, std::thread::hardware_concurrency()));
}

constexpr std::uint64_t kDefaultSeed = 1;

std::uint64_t default_seed() {
    if (const char* env = std::getenv("INSTAGEN_EMU_SEED")) {
        char* end = nullptr;
        const unsigned long long v = std::strtoull(env, &end, 0);
        if (end && end != env && !*end) return v;
        std::fprintf(stderr, "instagen emu: ignoring INSTAGEN_EMU_SEED=%s (not an integer)\n", env);
    }
    return kDefaultSeed;
}

void* helper_main(void* arg) {
    Worker& w = *static_cast<Worker*>(arg);
    Pool& p = pool();
    unsigned long long seen = 0;
    for (;;) {
        Launch* job;
        {
            std::unique_lock<std::mutex> lk(p.mu);
            p.wake.wait(lk, [&] { return p.generation != seen; });
            seen = p.generation;
            job = w.index < p.job_workers ? p.job : nullptr;
        }
        if (!job) continue;
        run_worker(w, *job);
        std::lock_guard<std::mutex> lk(p.mu);
        if (--p.busy == 0) p.idle.notify_all();
    }
    return nullptr;
}

// Makes `n` workers exist (fewer if a helper thread cannot be started); returns how many do.
unsigned ensure_workers(Pool& p, unsigned n) {
    while (p.workers.size() < n) {
        auto w = std::make_unique<Worker>();
        w->index = (unsigned)p.workers.size();
        if (w->index > 0) {
            pthread_t t;
            if (pthread_create(&t, nullptr, helper_main, w.get()) != 0) break;
            pthread_detach(t);
        }
        p.workers.push_back(std::move(w));
    }
    return std::min(n, (unsigned)p.workers.size());
}

// A launch configuration error, or "" if the launch is valid.
std::string check_launch(const instagen_emu_dims* d, const char* kernel, void** args, unsigned nparams) {
    char buf[256];
    Msg m(buf, sizeof buf);
    m.add("kernel %s: ", kernel);
    const std::size_t head = m.len;
    const unsigned long long threads = (unsigned long long)d->block[0] * d->block[1] * d->block[2];
    if (d->nargs != nparams) m.add("%u arguments given, the kernel takes %u", d->nargs, nparams);
    else if (nparams && !args) m.add("no argument array");
    else if (!d->block[0] || !d->block[1] || !d->block[2] || threads > kMaxThreads || d->block[2] > 64)
        m.add("invalid block (%u,%u,%u): 1 to 1024 threads, z at most 64", d->block[0], d->block[1], d->block[2]);
    else if (!d->grid[0] || !d->grid[1] || !d->grid[2] || d->grid[0] > 0x7fffffffu || d->grid[1] > 65535u ||
             d->grid[2] > 65535u)
        m.add("invalid grid (%u,%u,%u)", d->grid[0], d->grid[1], d->grid[2]);
    else if (d->smem_bytes > kMaxSmem) m.add("%u bytes of dynamic shared memory, at most %u", d->smem_bytes, kMaxSmem);
    return m.len == head ? std::string() : std::string(buf);
}

}   // namespace

// ---- the C API ----------------------------------------------------------------------------------------------

extern "C" int instagen_emu_run(const instagen_emu_dims* d, const char* kernel, instagen_emu_entry entry,
                                void** args, unsigned nparams, int flags) {
    tls_error = check_launch(d, kernel, args, nparams);
    if (!tls_error.empty()) return 1;
    Pool& p = pool();
    std::lock_guard<std::mutex> launch_lock(p.launch_mu);
    instagen_emu_install_fault_handler();
    if (!p.setting) p.setting = default_workers();
    if (!p.seeded) p.seed = default_seed(), p.seeded = true;
    Launch L(d, kernel, entry, args, (flags & INSTAGEN_EMU_RACECHECK_FLAG) != 0, p.seed);
    const unsigned used = ensure_workers(p, (unsigned)std::min<unsigned long long>(p.setting, L.nblocks));
    if (used > 1) {
        std::lock_guard<std::mutex> lk(p.mu);
        p.job = &L, p.job_workers = used, p.busy = used - 1, ++p.generation;
        p.wake.notify_all();
    }
    run_worker(*p.workers[0], L);
    if (used > 1) {
        std::unique_lock<std::mutex> lk(p.mu);
        p.idle.wait(lk, [&] { return p.busy == 0; });
        p.job = nullptr, p.job_workers = 0;
    }
    if (!L.failed.load()) return 0;
    tls_error = L.error;
    return 1;
}

extern "C" const char* instagen_emu_last_error(void) { return tls_error.c_str(); }

extern "C" int instagen_emu_set_workers(unsigned n) {
    if (n == 0 || n > kMaxWorkers) return -1;
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.launch_mu);
    p.setting = n;
    return 0;
}

extern "C" void instagen_emu_set_seed(unsigned long long seed) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.launch_mu);
    p.seed = seed, p.seeded = true;
}

extern "C" unsigned long long instagen_emu_seed(void) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.launch_mu);
    if (!p.seeded) p.seed = default_seed(), p.seeded = true;
    return p.seed;
}

extern "C" unsigned instagen_emu_workers(void) {
    Pool& p = pool();
    std::lock_guard<std::mutex> lk(p.launch_mu);
    if (!p.setting) p.setting = default_workers();
    return p.setting;
}

extern "C" void instagen_emu_syncthreads(const char* file, int line) {
    Worker& w = *tls_worker;
    Fiber& f = *w.cur;
    f.at("__syncthreads", file, line);
    if (w.done) {
        fiber_fail(w, "__syncthreads (%s:%d) after %u of %u threads exited (divergent barrier)", file, line, w.done,
                   w.nthreads);
    }
    f.state = kAtBarrier;
    if (++w.bar_count < w.nthreads) {
        yield(w, f);
        return;
    }
    unsigned others = 0;   // everyone has arrived: at this same __syncthreads?
    const Fiber* other = nullptr;
    for (unsigned i = 0; i < w.nthreads; ++i) {
        if (!same_site(w.fiber(i), f)) other = &w.fiber(i), ++others;
    }
    if (other) {
        fiber_fail(w, "divergent __syncthreads: %u threads at %s:%d, %u at %s:%d", w.nthreads - others, file, line,
                   others, other->file, other->line);
    }
    w.bar_count = 0;
    ++w.epoch;
    for (unsigned i = 0; i < w.nthreads; ++i) {
        w.fiber(i).state = kReady;
        w.make_ready(i);
    }
    new_interval(w);
    yield(w, f);   // the new interval's order decides who runs first, this thread included
}

extern "C" void instagen_emu_warp_op(int kind, unsigned mask, const char* what, const char* file, int line,
                                     instagen_emu_complete complete) {
    Worker& w = *tls_worker;
    Fiber& f = *w.cur;
    const unsigned lane = f.t.lane, warp = f.t.linear / 32, base = warp * 32, present = w.present(warp);
    f.at(what, file, line);
    if (!(mask >> lane & 1u)) {
        fiber_fail(w, "%s (%s:%d): mask 0x%08x lacks the calling lane %u", what, file, line, mask, lane);
    }
    if (mask & ~present) {
        fiber_fail(w, "%s (%s:%d): mask 0x%08x names lanes absent from warp %u (the block has %u threads)", what,
                   file, line, mask, warp, w.nthreads);
    }
    if (const unsigned gone = mask & w.warp_done[warp]) {
        fiber_fail(w, "%s (%s:%d, mask 0x%08x): lane %u has exited", what, file, line, mask,
                   (unsigned)__builtin_ctz(gone));
    }
    f.state = kAtWarp, f.kind = kind, f.mask = mask, f.complete = complete;
    w.warp_wait[warp] |= 1u << lane;
    if ((w.warp_wait[warp] & mask) != mask) {
        yield(w, f);
        return;
    }
    instagen_emu_thread* lanes[32];   // every lane of `mask` waits at a warp collective: this one?
    for (unsigned l = 0; l < 32; ++l) {
        Fiber& g = w.fiber(base + l);
        lanes[l] = (present >> l & 1u) ? &g.t : nullptr;
        if ((mask >> l & 1u) && (g.kind != kind || g.mask != mask || g.complete != complete)) {
            fiber_fail(w, "warp %u: lane %u is at %s (%s:%d, mask 0x%08x) while lane %u is at %s (%s:%d, mask 0x%08x)",
                       warp, lane, what, file, line, mask, l, g.what, g.file, g.line, g.mask);
        }
    }
    if (complete) complete(lanes, mask);
    w.warp_wait[warp] &= ~mask;
    for (unsigned l = 0; l < 32; ++l) {
        if (!(mask >> l & 1u)) continue;
        w.fiber(base + l).state = kReady;
        if (l != lane) w.make_ready(base + l);
    }
}

extern "C" void instagen_emu_trap(const char* file, int line, const char* msg) {
    Worker* w = tls_worker;
    if (!w || !w->cur) {
        std::fprintf(stderr, "instagen emu: %s (%s:%d) outside a kernel\n", msg, file ? file : "?", line);
        std::abort();
    }
    if (!file) file = w->cur->file, line = w->cur->line;   // from a collective's completion: its site
    fiber_fail(*w, "%s (%s:%d)", msg, file, line);
}

extern "C" void instagen_emu_cp_async(void* dst, const void* src, unsigned src_bytes, const char* file, int line) {
    Worker& w = *tls_worker;
    Fiber& f = *w.cur;
    if ((reinterpret_cast<std::uintptr_t>(dst) | reinterpret_cast<std::uintptr_t>(src)) & 15u) {
        fiber_fail(w, "cp.async (%s:%d): %p <- %p is not 16-byte aligned", file, line, dst, src);
    }
    if (src_bytes > 16) fiber_fail(w, "cp.async (%s:%d): %u source bytes, at most 16", file, line, src_bytes);
    if (f.npending == kMaxPending) {   // completing the oldest copy early is allowed
        Pending& old = f.pending[0];
        if (old.due) land_copy(w, f, old);
        if (w.checked) async_done(w, old);
        std::memmove(f.pending, f.pending + 1, sizeof(Pending) * --f.npending);
    }
    Pending& p = f.pending[f.npending++];
    p.dst = dst;
    p.group = kUncommitted;
    p.issue_epoch = w.epoch;
    p.file = file, p.line = line;
    std::memset(p.data, 0, sizeof p.data);
    std::memcpy(p.data, src, src_bytes);   // the source is read now, the destination written when it lands
    // When it lands: now (1 in 4), at the covering wait (1 in 4), or after 1 to 4 switches of this thread.
    const unsigned r = (unsigned)(w.next_random() % 8);
    p.due = r < 2 ? 1 : r < 4 ? kAtWait : r - 3;
    if (r < 2) {
        land_copy(w, f, p);
        if (!w.checked) --f.npending;
    }
}

extern "C" void instagen_emu_cp_async_commit(void) {
    Fiber& f = *tls_worker->cur;
    for (unsigned i = 0; i < f.npending; ++i) {
        if (f.pending[i].group == kUncommitted) f.pending[i].group = f.committed;
    }
    ++f.committed;   // an empty group counts too, as in PTX
}

extern "C" void instagen_emu_cp_async_wait(unsigned allowed_pending_groups) {
    Worker& w = *tls_worker;
    retire(w, *w.cur, allowed_pending_groups);
}

extern "C" void* instagen_emu_static_smem(const void* key, size_t bytes) {
    Worker& w = *tls_worker;
    StaticVar* v = nullptr;
    for (StaticVar& x : w.vars) {
        if (x.key == key) {
            v = &x;
            break;
        }
    }
    if (!v) {
        void* p = instagen_emu_alloc_guarded(std::max<size_t>(bytes, 1), 128);   // overruns fault
        if (!p) fiber_fail(w, "out of memory for a static __shared__ array of %zu bytes", bytes);
        w.vars.push_back(StaticVar{key, static_cast<unsigned char*>(p), bytes, 0, {}});
        w.active.clear();   // the push may have moved the entries: rebuilt
        for (StaticVar& x : w.vars) {
            if (x.block == w.serial) w.active.push_back(&x);
        }
        v = &w.vars.back();
    }
    if (v->block != w.serial) {
        v->block = w.serial;
        std::memset(v->p, 0xff, bytes);   // poison, as dynamic shared memory
        if (w.checked && v->shadow.size() < bytes) v->shadow.resize(bytes);
        w.active.push_back(v);
    }
    return v->p;
}

extern "C" void instagen_emu_shared_read(const void* p, size_t bytes) {
    Worker* w = tls_worker;
    if (w && w->checked && w->cur) shared_access(*w, p, bytes, false, Site{0, w->cur->file, w->cur->line});
}

// ---- the race check's hooks: -fsanitize=thread instrumentation of the kernels' race-check copies ----------
// Only the instrumented objects call these (the TSan runtime is not linked); an access outside a race-checked
// launch or outside shared memory returns at once.

namespace {
inline void hook(const void* p, std::size_t n, bool write, void* pc) {
    Worker* w = tls_worker;
    if (w && w->checked && w->cur) shared_access(*w, p, n, write, Site{reinterpret_cast<std::uintptr_t>(pc), nullptr, 0});
}
}   // namespace

#define INSTAGEN_EMU_HOOKS(N)                                                                                  \
    extern "C" void __tsan_read##N(void* p) { hook(p, N, false, __builtin_return_address(0)); }                \
    extern "C" void __tsan_write##N(void* p) { hook(p, N, true, __builtin_return_address(0)); }                \
    extern "C" void __tsan_unaligned_read##N(void* p) { hook(p, N, false, __builtin_return_address(0)); }      \
    extern "C" void __tsan_unaligned_write##N(void* p) { hook(p, N, true, __builtin_return_address(0)); }
INSTAGEN_EMU_HOOKS(1)
INSTAGEN_EMU_HOOKS(2)
INSTAGEN_EMU_HOOKS(4)
INSTAGEN_EMU_HOOKS(8)
INSTAGEN_EMU_HOOKS(16)
#undef INSTAGEN_EMU_HOOKS
extern "C" void __tsan_read_range(void* p, unsigned long n) { hook(p, n, false, __builtin_return_address(0)); }
extern "C" void __tsan_write_range(void* p, unsigned long n) { hook(p, n, true, __builtin_return_address(0)); }
extern "C" void __tsan_init(void) {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit(void) {}
extern "C" void __tsan_vptr_update(void**, void*) {}

// A SIGSEGV/SIGBUS (guard.cpp's handler): while a kernel thread runs, ends its launch with an error (via
// siglongjmp to the worker); otherwise returns and the previous handler gets the signal.
extern "C" void instagen_emu_kernel_fault(int sig, const void* addr, int general_protection) {
    Worker* w = tls_worker;
    if (!w || !tls_in_kernel || !w->cur) return;
    Msg m = block_msg(*w, w->cur);
    const std::size_t head = m.len;
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(addr), slot = kStackBytes + page_bytes();
    const std::uintptr_t smem_end = reinterpret_cast<std::uintptr_t>(w->smem) + w->smem_bytes;
    if (w->smem && a - smem_end < page_bytes()) {
        m.add("shared memory overrun at %p: %zu bytes past the end of the block's %u bytes of dynamic shared memory",
              addr, (std::size_t)(a - smem_end), w->smem_bytes);
    } else {
        m.len += instagen_emu_describe_guarded(addr, m.buf + m.len, m.cap - m.len);
    }
    for (const Arena& ar : w->arenas) {
        const std::uintptr_t off = a - reinterpret_cast<std::uintptr_t>(ar.base);
        if (m.len == head && off < ar.bytes && off % slot < page_bytes()) {
            m.add("stack overflow at %p (fibre stacks are %zu KiB)", addr, kStackBytes / 1024);
        }
    }
    if (m.len == head) {
        m.add("%s at %p%s", sig == SIGBUS ? "bus error" : "segmentation fault", addr,
              general_protection ? " (general protection: a misaligned vector access or a wild pointer)" : "");
    }
    w->failed = true;
    siglongjmp(w->jb, 1);
}
