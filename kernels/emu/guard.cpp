// Guarded buffers and the fault handler of the CPU emulator (see runtime.cpp).
//
// instagen_emu_alloc_guarded maps [PROT_NONE page][data][PROT_NONE page] with the data ending where the
// second guard page begins (its start aligned as asked), and records the mapping in a lock-free table the
// signal handler can read. The SIGSEGV/SIGBUS handler, installed once on an alternate signal stack, hands
// every fault to runtime.cpp (which ends the launch if a kernel thread faulted) and otherwise chains to the
// handler that was installed before it.
#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <mutex>
#include <unordered_map>

#include <sys/mman.h>
#include <unistd.h>

#include "cuda_emu.h"

namespace {

constexpr unsigned kGuardSlots = 4096;

struct GuardSlot {
    std::atomic<std::uintptr_t> map{0};   // 0: free, 1: being filled
    std::size_t map_len;
    std::uintptr_t lo, hi;
};
GuardSlot g_guard[kGuardSlots];
struct sigaction g_old_segv, g_old_bus;

struct Allocs {
    std::mutex mu;
    std::unordered_map<std::uintptr_t, std::pair<void*, std::size_t>> live;   // data start -> mapping
};
Allocs& allocs() {
    static Allocs* a = new Allocs;
    return *a;
}

std::size_t page_bytes() {
    static const std::size_t p = (std::size_t)sysconf(_SC_PAGESIZE);
    return p;
}

void on_fault(int sig, siginfo_t* si, void* uc) {
#ifdef SI_KERNEL
    const int gp = si->si_code == SI_KERNEL;
#else
    const int gp = 0;
#endif
    instagen_emu_kernel_fault(sig, si->si_addr, gp);   // does not return for a fault in a kernel thread
    const struct sigaction& old = sig == SIGSEGV ? g_old_segv : g_old_bus;
    if (old.sa_flags & SA_SIGINFO) {
        old.sa_sigaction(sig, si, uc);
    } else if (old.sa_handler == SIG_DFL || old.sa_handler == SIG_IGN) {
        signal(sig, SIG_DFL);   // returning re-executes the faulting access under the default action
    } else {
        old.sa_handler(sig);
    }
}

}   // namespace

extern "C" void instagen_emu_install_fault_handler(void) {
    static std::once_flag once;
    std::call_once(once, [] {
        struct sigaction sa {};
        sa.sa_sigaction = on_fault;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGSEGV, &sa, &g_old_segv);
        sigaction(SIGBUS, &sa, &g_old_bus);
    });
}

extern "C" size_t instagen_emu_describe_guarded(const void* addr, char* buf, size_t cap) {
    const std::uintptr_t a = reinterpret_cast<std::uintptr_t>(addr);
    for (GuardSlot& g : g_guard) {
        const std::uintptr_t base = g.map.load(std::memory_order_acquire);
        if (base <= 1 || a - base >= g.map_len) continue;
        const std::size_t size = g.hi - g.lo;
        const char* oob = "out-of-bounds access at %p: %zu bytes %s of a guarded buffer of %zu bytes";
        int n;
        if (a >= g.hi) {
            n = std::snprintf(buf, cap, oob, addr, (std::size_t)(a - g.hi), "past the end", size);
        } else if (a < g.lo) {
            n = std::snprintf(buf, cap, oob, addr, (std::size_t)(g.lo - a), "before the start", size);
        } else {
            n = std::snprintf(buf, cap, "fault at %p inside a guarded buffer of %zu bytes", addr, size);
        }
        return n < 0 || cap == 0 ? 0 : std::min((std::size_t)n, cap - 1);
    }
    return 0;
}

extern "C" void* instagen_emu_alloc_guarded(size_t bytes, size_t align) {
    const std::size_t page = page_bytes();
    if (!align || (align & (align - 1)) || align > page || bytes > ((std::size_t)1 << 48)) return nullptr;
    const std::size_t span = (bytes + align - 1 + page - 1) / page * page, total = span + 2 * page;
    void* mapped = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mapped == MAP_FAILED) return nullptr;
    unsigned char* m = static_cast<unsigned char*>(mapped);
    mprotect(m, page, PROT_NONE);
    mprotect(m + page + span, page, PROT_NONE);
    const std::uintptr_t end = reinterpret_cast<std::uintptr_t>(m + page + span);
    const std::uintptr_t lo = (end - bytes) & ~std::uintptr_t(align - 1);
    Allocs& a = allocs();
    std::lock_guard<std::mutex> lk(a.mu);
    a.live[lo] = {m, total};
    for (GuardSlot& g : g_guard) {   // best effort: a full table only loses the detailed message
        std::uintptr_t expect = 0;
        if (!g.map.compare_exchange_strong(expect, 1)) continue;
        g.map_len = total;
        g.lo = lo;
        g.hi = lo + bytes;
        g.map.store(reinterpret_cast<std::uintptr_t>(m), std::memory_order_release);
        break;
    }
    return reinterpret_cast<void*>(lo);
}

extern "C" void instagen_emu_free_guarded(void* p) {
    Allocs& a = allocs();
    std::lock_guard<std::mutex> lk(a.mu);
    const auto it = a.live.find(reinterpret_cast<std::uintptr_t>(p));
    if (it == a.live.end()) return;
    const auto [m, total] = it->second;
    a.live.erase(it);
    for (GuardSlot& g : g_guard) {
        if (g.map.load() == reinterpret_cast<std::uintptr_t>(m)) g.map.store(0, std::memory_order_release);
    }
    munmap(m, total);
}
