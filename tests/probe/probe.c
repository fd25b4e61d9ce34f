/* berth's in-container probe: prints, as one JSON object, what a process inside a container
 * observes about its confinement — capability sets, ID maps, no_new_privs, seccomp mode, the
 * errno of syscalls that must be denied (native and i386), the state of masked and read-only
 * paths, its open descriptors, keyrings and cgroup view. Built statically by the test suite
 * (tests/security.rs) and copied into an image; tests compare its output with the spec.
 *
 * It changes nothing it could not undo inside the container: every probe either fails (what
 * the tests want) or does something harmless, and no probe touches a global kernel knob. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/keyctl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <dirent.h>
#include <termios.h>
#include <unistd.h>

static int first = 1;

static void key(const char *k) {
    printf("%s\"%s\":", first ? "" : ",", k);
    first = 0;
}

static void str(const char *s) {
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') printf("\\n");
        else if (c < 0x20 || c >= 0x7f) printf("\\u%04x", c);
        else putchar(c);
    }
    putchar('"');
}

static void kv_str(const char *k, const char *v) { key(k); str(v); }
static void kv_int(const char *k, long v) { key(k); printf("%ld", v); }

static char *slurp(const char *path) {
    static char buf[65536];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { snprintf(buf, sizeof buf, "!%s", strerror(errno)); return buf; }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n < 0) { snprintf(buf, sizeof buf, "!%s", strerror(errno)); return buf; }
    buf[n] = 0;
    return buf;
}

static void status_field(const char *field, char *out, size_t len) {
    char *s = slurp("/proc/self/status");
    char *p = strstr(s, field);
    out[0] = 0;
    if (!p) return;
    p += strlen(field);
    while (*p == ':' || *p == ' ' || *p == '\t') p++;
    size_t i = 0;
    while (p[i] && p[i] != '\n' && i + 1 < len) { out[i] = p[i]; i++; }
    out[i] = 0;
}

/* The errno of a raw syscall, 0 if it succeeded (a success is undone where it matters). */
static long err_of(long r) { return r < 0 ? errno : 0; }

/* The errno of a call made in a forked child, for calls that would change the probe itself
 * (unshare, setns) if they succeeded. */
#define IN_CHILD(call)                                                                       \
    ({                                                                                       \
        pid_t p_ = fork();                                                                   \
        if (p_ == 0) _exit((call) < 0 ? (errno & 0xff) : 0);                                 \
        int st_ = 0;                                                                         \
        waitpid(p_, &st_, 0);                                                                \
        WIFEXITED(st_) ? (long)WEXITSTATUS(st_) : -1L;                                       \
    })

#if defined(__x86_64__)
/* An i386 system call from 64-bit code, through int $0x80 (IA32 emulation). */
static long sys32(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a), "c"(b), "d"(c)
                     : "memory", "r8", "r9", "r10", "r11");
    return ret < 0 && ret > -4096 ? -ret : 0;
}
#endif

/* What a path looks like to a reader and a writer: "missing", "empty" (masked: opens, reads
 * nothing), "readable", and whether a write is refused. */
static void path_state(const char *path) {
    key(path);
    struct stat st;
    if (lstat(path, &st) < 0) { printf("{\"exists\":false}"); return; }
    char buf[256];
    long rd = -1, wr_errno = 0;
    int isdir = S_ISDIR(st.st_mode);
    if (isdir) {
        DIR *d = opendir(path);
        rd = 0;
        if (d) {
            struct dirent *e;
            while ((e = readdir(d)))
                if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) rd++;
            closedir(d);
        } else rd = -errno;
        /* A write into a directory: creating a file in it. */
        char f[512];
        snprintf(f, sizeof f, "%s/.berth-probe", path);
        int fd = open(f, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) { close(fd); unlink(f); wr_errno = 0; } else wr_errno = errno;
    } else {
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0) { rd = read(fd, buf, sizeof buf); if (rd < 0) rd = -errno; close(fd); }
        else rd = -errno;
        /* Open for writing without writing anything. */
        fd = open(path, O_WRONLY | O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0) { close(fd); wr_errno = 0; } else wr_errno = errno;
    }
    struct statvfs vfs;
    int ro = statvfs(path, &vfs) == 0 && (vfs.f_flag & ST_RDONLY);
    printf("{\"exists\":true,\"dir\":%s,\"read\":%ld,\"write_errno\":%ld,\"ro_mount\":%s,"
           "\"rdev\":\"%u:%u\"}",
           isdir ? "true" : "false", rd, wr_errno, ro ? "true" : "false",
           major(st.st_rdev), minor(st.st_rdev));
}

static const char *paths[] = {
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/kallsyms", "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sysrq-trigger", "/sys/firmware",
    "/sys/devices/virtual/powercap", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
    "/proc/sys/kernel/core_pattern", "/proc/sys/net", "/sys", "/sys/fs/cgroup",
    "/proc/sys/fs/binfmt_misc", NULL,
};

int main(int argc, char **argv) {
    char v[256];
    (void)argc; (void)argv;
    putchar('{');
    kv_int("uid", getuid());
    kv_int("euid", geteuid());
    kv_int("gid", getgid());
    gid_t groups[64];
    int ng = getgroups(64, groups);
    key("groups"); putchar('[');
    for (int i = 0; i < ng; i++) printf("%s%d", i ? "," : "", groups[i]);
    putchar(']');
    const char *fields[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
                            "Seccomp", NULL};
    for (int i = 0; fields[i]; i++) { status_field(fields[i], v, sizeof v); kv_str(fields[i], v); }
    kv_str("uid_map", slurp("/proc/self/uid_map"));
    kv_str("gid_map", slurp("/proc/self/gid_map"));
    kv_str("cgroup", slurp("/proc/self/cgroup"));
    if (gethostname(v, sizeof v) == 0) kv_str("hostname", v);

    /* Native syscalls that must be denied (or refused by the kernel for lack of privilege). */
    key("native"); putchar('{'); first = 1;
    kv_int("keyctl", err_of(syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0)));
    kv_int("add_key", err_of(syscall(SYS_add_key, "user", "berth-probe", "x", 1, KEY_SPEC_SESSION_KEYRING)));
    kv_int("bpf", err_of(syscall(SYS_bpf, 0, NULL, 0)));
    kv_int("perf_event_open", err_of(syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0)));
    kv_int("open_by_handle_at", err_of(syscall(SYS_open_by_handle_at, 1, NULL, O_RDONLY)));
    kv_int("unshare_user", IN_CHILD(syscall(SYS_unshare, CLONE_NEWUSER)));
    kv_int("unshare_ns", IN_CHILD(syscall(SYS_unshare, CLONE_NEWNS)));
    kv_int("setns", err_of(syscall(SYS_setns, -1, 0)));
    kv_int("mount", err_of(syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL)));
    kv_int("umount2", err_of(syscall(SYS_umount2, "/proc/kcore", MNT_DETACH)));
    kv_int("pivot_root", err_of(syscall(SYS_pivot_root, "/", "/")));
    /* A PID that does not exist: the kernel answers ESRCH, a filter EPERM. */
    kv_int("ptrace", err_of(syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, 999999, 0, 0)));
    kv_int("kexec_load", err_of(syscall(SYS_kexec_load, 0, 0, NULL, 0)));
    kv_int("init_module", err_of(syscall(SYS_init_module, NULL, 0, "")));
    kv_int("finit_module", err_of(syscall(SYS_finit_module, -1, "", 0)));
    kv_int("delete_module", err_of(syscall(SYS_delete_module, "berth_probe_none", 0)));
    kv_int("userfaultfd", err_of(syscall(SYS_userfaultfd, 0)));
    kv_int("io_uring_setup", err_of(syscall(SYS_io_uring_setup, 1, NULL)));
    kv_int("swapon", err_of(syscall(SYS_swapon, "/nonexistent", 0)));
    kv_int("swapoff", err_of(syscall(SYS_swapoff, "/nonexistent")));
    kv_int("reboot", err_of(syscall(SYS_reboot, 0, 0, 0, NULL))); /* bad magic: never reboots */
    kv_int("clone3", err_of(syscall(SYS_clone3, NULL, 0)));
    kv_int("socket_vsock", err_of(syscall(SYS_socket, 40 /* AF_VSOCK */, SOCK_STREAM, 0)));
    kv_int("socket_audit", err_of(syscall(SYS_socket, AF_NETLINK, SOCK_RAW, 9 /* NETLINK_AUDIT */)));
    kv_int("tiocsti", err_of(ioctl(0, TIOCSTI, "x")));
    kv_int("tioclinux", err_of(ioctl(0, TIOCLINUX, "\x00")));
    kv_int("mknod_block", err_of(mknod("/tmp/.berth-probe-blk", S_IFBLK | 0600, makedev(7, 0))));
    unlink("/tmp/.berth-probe-blk");
    kv_int("unknown", err_of(syscall(1000)));
    putchar('}'); first = 0;

#if defined(__x86_64__)
    key("i386"); putchar('{'); first = 1;
    kv_int("keyctl", sys32(288, KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0));
    kv_int("unshare_user", IN_CHILD(-(long)(errno = sys32(310, CLONE_NEWUSER, 0, 0)) ? -1 : 0));
    kv_int("mount", sys32(21, (long)"none", (long)"/tmp", (long)"tmpfs"));
    kv_int("socketcall", sys32(102, 1, 0, 0));
    kv_int("getpid_ok", sys32(20, 0, 0, 0));
    putchar('}'); first = 0;
#endif

    key("paths"); putchar('{'); first = 1;
    for (int i = 0; paths[i]; i++) path_state(paths[i]);
    putchar('}'); first = 0;

    /* The container's PID 1 must be unreachable (runc CVE-2019-5736 class). */
    key("pid1"); putchar('{'); first = 1;
    int fd = open("/proc/1/exe", O_RDONLY | O_CLOEXEC);
    kv_int("open_exe", fd < 0 ? errno : 0); if (fd >= 0) close(fd);
    fd = open("/proc/1/exe", O_WRONLY | O_CLOEXEC);
    kv_int("write_exe", fd < 0 ? errno : 0); if (fd >= 0) close(fd);
    char link[256];
    kv_int("readlink_exe", readlink("/proc/1/exe", link, sizeof link) < 0 ? errno : 0);
    DIR *mf = opendir("/proc/1/map_files");
    kv_int("map_files", mf ? 0 : errno); if (mf) closedir(mf);
    DIR *fdd = opendir("/proc/1/fd");
    kv_int("fd_dir", fdd ? 0 : errno); if (fdd) closedir(fdd);
    putchar('}'); first = 0;

    /* Our own descriptors. */
    key("fds"); putchar('{'); first = 1;
    DIR *d = opendir("/proc/self/fd");
    int dfd = d ? dirfd(d) : -1;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == dfd) continue;
        char p[300]; ssize_t n;
        snprintf(p, sizeof p, "/proc/self/fd/%s", e->d_name);
        n = readlink(p, link, sizeof link - 1);
        link[n > 0 ? n : 0] = 0;
        kv_str(e->d_name, link);
    }
    if (d) closedir(d);
    putchar('}'); first = 0;

    kv_str("keys", slurp("/proc/keys"));
    long sess = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    kv_int("session_keyring", sess < 0 ? -errno : sess);
    printf("}\n");
    return 0;
}
