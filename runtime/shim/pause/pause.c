/*
 * cri-shim pause: the pid 1 of a pod's shared PID namespace.
 *
 * What kubernetes' build/pause/linux/pause.c does (reap every child, exit 0 on SIGTERM or
 * SIGINT), written for a process that a pod may attack:
 *
 * - No libc: raw system calls from a 1-page text (-nostdlib -static, x86_64 and aarch64),
 *   so the process costs a few pages: 16 kB PSS measured here, where kubernetes' pause
 *   built with `cc -static -Os -s` (glibc) costs 692 kB; and there is no start-up code
 *   (locale, stdio, TLS, IRELATIVE relocations) for a container to aim at.
 * - No signal handlers: SIGCHLD, SIGTERM and SIGINT are blocked and taken synchronously
 *   with rt_sigtimedwait(2). Every other signal keeps its default action, which the kernel
 *   never applies to the init of a PID namespace when a process inside that namespace
 *   sends it (kernel/signal.c, sig_task_ignored: SIGNAL_UNKILLABLE): nothing is queued for
 *   it, so no container can fill the pending queue of the uid it runs as.
 * - As pid 1, SIGTERM and SIGINT end it only when they come from outside the pod's PID
 *   namespace: the kernel reports such a sender as si_pid 0 with si_code SI_USER
 *   (kernel/signal.c, send_signal_locked, "From an ancestor pid namespace?"), a value a
 *   process inside cannot forge (rt_sigqueueinfo refuses si_code >= 0 for another
 *   process). So a container cannot stop the pod's PID holder, as it cannot SIGKILL it.
 *   Run as any other pid (by hand, in a test), a kill(2) from anyone ends it.
 * - Reaping: wait4(-1, WNOHANG | __WALL) until nothing is left, at start and after each
 *   SIGCHLD (orphans reparented to us always signal SIGCHLD: kernel/exit.c reparent_leader).
 * - Not dumpable (PR_SET_DUMPABLE 0), even though the shim already execs it from a memfd
 *   this process cannot read (which makes exec mark it so, fs/exec.c would_dump); comm
 *   "pod-pid-holder" (what a container's ps shows as pid 1); descriptors above 2 closed.
 *
 * The shim confines the process before the exec (runtime/shim/pidholder.py): an empty
 * read-only root, no capabilities, uid nobody, no_new_privs, stdio on /dev/null. Build:
 * python -m runtime.shim.pause build (runtime/shim/pause/build.py has the flags).
 */

#include <asm/unistd.h>
#include <linux/close_range.h>
#include <linux/prctl.h>
#include <linux/signal.h>
#include <linux/wait.h>

#define KERNEL_SIGSET_BYTES 8 /* _NSIG / 8: the size rt_sig* calls take on x86_64 and aarch64 */

#if defined(__x86_64__)
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;
	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}

/* the kernel enters at _start with argc at the 16-byte aligned stack top; C wants a call */
__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	xor %ebp, %ebp\n"
	"	and $-16, %rsp\n"
	"	call pause_main\n"
	"	ud2\n");
#elif defined(__aarch64__)
static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	register long x4 __asm__("x4") = e;
	register long x5 __asm__("x5") = f;
	__asm__ volatile("svc 0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
			 : "memory");
	return x0;
}

__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	mov x29, #0\n"
	"	mov x30, #0\n"
	"	bl pause_main\n"
	"	brk #0\n");
#else
#error "cri-shim pause: raw system calls are written for x86_64 and aarch64 only"
#endif

#define sys(n, a, b, c, d) sys6((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)

static void reap_all(void)
{
	/* > 0: one reaped, 0: children left but none exited, < 0 (-ECHILD): none left */
	while (sys(__NR_wait4, -1, 0, WNOHANG | __WALL, 0) > 0)
		;
}

static __attribute__((noreturn)) void quit(int code)
{
	for (;;)
		sys(__NR_exit_group, code, 0, 0, 0);
}

__attribute__((noreturn, used)) void pause_main(void)
{
	unsigned long waited = (1UL << (SIGCHLD - 1)) | (1UL << (SIGTERM - 1)) | (1UL << (SIGINT - 1));
	siginfo_t info;
	long sig;
	int guarded = sys(__NR_getpid, 0, 0, 0, 0) == 1;

	sys(__NR_prctl, PR_SET_DUMPABLE, 0, 0, 0);
	sys(__NR_prctl, PR_SET_NAME, "pod-pid-holder", 0, 0);
	sys(__NR_close_range, 3, ~0U, 0, 0); /* the shim closed them; ENOSYS before Linux 5.9 */
	if (sys(__NR_rt_sigprocmask, SIG_SETMASK, &waited, 0, KERNEL_SIGSET_BYTES) < 0)
		quit(3);
	reap_all(); /* anything that exited before the mask was set */
	for (;;) {
		sig = sys(__NR_rt_sigtimedwait, &waited, &info, 0, KERNEL_SIGSET_BYTES);
		if (sig == SIGCHLD)
			reap_all();
		else if ((sig == SIGTERM || sig == SIGINT) && info.si_code == SI_USER && (!guarded || info.si_pid == 0))
			quit(0);
		/* a negative sig is EINTR (a stop and continue): wait again */
	}
}
