/* PID 1 of the hvfabric Linux guest.
 *
 *  1. mounts proc on /proc, sysfs on /sys, devtmpfs on /dev, tmpfs on /tmp;
 *     with root=/dev/vdX, switches to that disk's root file system first (see
 *     switch_to_disk_root);
 *  2. brings up lo (127.0.0.1/8) and configures interfaces from the kernel command line's
 *     vlan= and ip= options (see net.c for the accepted forms; ip=dhcp runs dhcp.c's client
 *     before anything else, so hv.run= commands find the network configured);
 *     then writes /etc/hosts and, from nameserver= and hv.domain=, /etc/resolv.conf;
 *  3. prints a banner, then runs "hv.run=..." once if given (sh -c), then the interactive
 *     shell on the console's real tty (so Ctrl-C and job control work), respawning it
 *     when it exits;
 *  4. reaps every child (orphans are re-parented to PID 1) on SIGCHLD;
 *     busybox's signals for halt, poweroff and reboot: SIGUSR1 and SIGUSR2 power off,
 *     SIGTERM and SIGINT (Ctrl-Alt-Del) reboot.
 */
#include "hv.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

static char g_cmdline[4096];

static void mount_fs(const char *src, const char *dir, const char *type, unsigned long flags,
                     const char *data)
{
    mkdir(dir, 0755);
    if (mount(src, dir, type, flags, data) < 0 && errno != EBUSY)
        fprintf(stderr, "init: mount %s on %s: %s\n", type, dir, strerror(errno));
}

static void read_file(const char *path, char *buf, size_t n)
{
    buf[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t r = read(fd, buf, n - 1);
    close(fd);
    if (r < 0)
        r = 0;
    buf[r] = 0;
    while (r > 0 && (buf[r - 1] == '\n' || buf[r - 1] == ' '))
        buf[--r] = 0;
}

/* Value of the nth (from 0) "key=value" kernel parameter (double quotes around the value
 * are removed); 0 if there are not that many. */
static int cmdline_param_nth(const char *key, int nth, char *out, size_t n)
{
    size_t klen = strlen(key);
    const char *p = g_cmdline;
    while (*p) {
        while (*p == ' ')
            p++;
        const char *start = p;
        int quoted = 0;
        while (*p && (quoted || *p != ' ')) {
            if (*p == '"')
                quoted = !quoted;
            p++;
        }
        if ((size_t)(p - start) > klen && strncmp(start, key, klen) == 0 && start[klen] == '=' &&
            nth-- == 0) {
            size_t j = 0;
            for (const char *q = start + klen + 1; q < p && j + 1 < n; q++)
                if (*q != '"')
                    out[j++] = *q;
            out[j] = 0;
            return 1;
        }
    }
    return 0;
}

static int cmdline_param(const char *key, char *out, size_t n)
{
    return cmdline_param_nth(key, 0, out, n);
}

/* The tty behind /dev/console (the last entry of /sys/class/tty/console/active). */
static void console_device(char *out, size_t n)
{
    char active[256];
    read_file("/sys/class/tty/console/active", active, sizeof active);
    char *last = strrchr(active, ' ');
    last = last ? last + 1 : active;
    if (*last)
        snprintf(out, n, "/dev/%s", last);
    else
        snprintf(out, n, "/dev/console");
}

/* /etc/hosts (localhost, and this host's name on 127.0.1.1) and, when the command line names
 * DNS servers (nameserver=IP, dracut's option, repeatable; hv.domain=DOMAIN for the search
 * list, as a lab passes them), /etc/resolv.conf; otherwise resolv.conf stays as DHCP wrote
 * it, if it did. */
static void write_name_files(void)
{
    char host[65] = "", domain[128] = "";
    gethostname(host, sizeof host - 1);
    cmdline_param("hv.domain", domain, sizeof domain);
    FILE *f = fopen("/etc/hosts", "w");
    if (f) {
        fprintf(f, "127.0.0.1\tlocalhost\n::1\tlocalhost\n");
        if (domain[0])
            fprintf(f, "127.0.1.1\t%s.%s %s\n", host, domain, host);
        else
            fprintf(f, "127.0.1.1\t%s\n", host);
        fclose(f);
    }
    char servers[3][48];
    int n = 0;
    for (int i = 0; n < 3 && cmdline_param_nth("nameserver", i, servers[n], sizeof servers[n]);
         i++) {
        struct in_addr a;
        if (parse_ipv4(servers[n], &a) == 0)
            n++;
        else
            fprintf(stderr, "init: nameserver=%s: not an IPv4 address\n", servers[n]);
    }
    if (!n)
        return;
    f = fopen("/etc/resolv.conf", "w");
    if (!f)
        return;
    fprintf(f, "# from the kernel command line\n");
    if (domain[0])
        fprintf(f, "search %s\n", domain);
    for (int i = 0; i < n; i++)
        fprintf(f, "nameserver %s\n", servers[i]);
    fclose(f);
}

/* root=/dev/vdX (a Debian root file system on a disk, hv image build debian): mount it,
 * mount a tmpfs on its /run and bind our /bin, /sbin, /usr/bin and /usr/sbin (hvbox, busybox
 * and their links) under /run/hv,
 * move /dev /proc /sys /tmp into it, and make it the root; this process carries on as init
 * there (network, hostname, hv.run=, and the disk's /bin/sh as the console shell). Our
 * applets come after the disk's own tools in PATH. On a failure: stay in the initramfs. */
/* hv.time=SECONDS (since the epoch, UTC): the guest has no RTC, so hv passes the wall clock
 * on the command line (the host's time, or a fixed date on virtual time) and init sets it. */
static void set_wall_clock(void)
{
    char text[32];
    if (!cmdline_param("hv.time", text, sizeof text))
        return;
    char *end;
    long long secs = strtoll(text, &end, 10);
    struct timeval tv = {.tv_sec = (time_t)secs, .tv_usec = 0};
    if (*end || secs <= 0 || settimeofday(&tv, NULL) < 0)
        fprintf(stderr, "init: hv.time=%s: cannot set the clock\n", text);
}

static int g_disk_root; /* init switched to root= (a disk) */

static void switch_to_disk_root(void)
{
    char dev[64], fstype[16] = "ext4";
    if (!cmdline_param("root", dev, sizeof dev) || strncmp(dev, "/dev/", 5) != 0)
        return;
    cmdline_param("rootfstype", fstype, sizeof fstype);
    struct stat st;
    for (int i = 0; i < 100 && stat(dev, &st) < 0; i++)
        usleep(10000); /* virtio-blk probes before init runs: this is a safety net */
    mkdir("/newroot", 0755);
    if (mount(dev, "/newroot", fstype, MS_NOATIME, NULL) < 0) {
        fprintf(stderr, "init: root=%s: mount %s: %s; staying in the initramfs\n", dev, fstype,
                strerror(errno));
        return;
    }
    mount_fs("tmpfs", "/newroot/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
    mkdir("/newroot/run/hv", 0755);
    /* busybox's links are relative (../bin/busybox), so they work from there too */
    static const char *const tools[][2] = {{"/bin", "/newroot/run/hv/bin"},
                                           {"/sbin", "/newroot/run/hv/sbin"},
                                           {"/usr/bin", "/newroot/run/hv/usr/bin"},
                                           {"/usr/sbin", "/newroot/run/hv/usr/sbin"}};
    mkdir("/newroot/run/hv/usr", 0755);
    for (size_t i = 0; i < sizeof tools / sizeof tools[0]; i++) {
        mkdir(tools[i][1], 0755);
        if (mount(tools[i][0], tools[i][1], NULL, MS_BIND, NULL) < 0)
            fprintf(stderr, "init: bind %s on %s: %s\n", tools[i][0], tools[i][1],
                    strerror(errno));
    }
    static const char *const moved[] = {"/dev", "/proc", "/sys", "/tmp"};
    for (size_t i = 0; i < sizeof moved / sizeof moved[0]; i++) {
        char to[32];
        snprintf(to, sizeof to, "/newroot%s", moved[i]);
        if (lstat(to, &st) == 0 && S_ISLNK(st.st_mode))
            unlink(to); /* debootstrap --foreign leaves proc -> /proc */
        mkdir(to, 0755);
        if (mount(moved[i], to, NULL, MS_MOVE, NULL) < 0)
            fprintf(stderr, "init: move %s: %s\n", moved[i], strerror(errno));
    }
    if (chdir("/newroot") < 0 || mount(".", "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 ||
        chdir("/") < 0) {
        fprintf(stderr, "init: switch to root=%s: %s\n", dev, strerror(errno));
        return;
    }
    setenv("PATH",
           "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:"
           "/run/hv/bin:/run/hv/sbin:/run/hv/usr/bin:/run/hv/usr/sbin",
           1);
    g_disk_root = 1;
    setenv("HOME", "/root", 1);
}

static void banner(void)
{
    struct utsname u;
    struct sysinfo si;
    char up[64];
    uname(&u);
    sysinfo(&si);
    read_file("/proc/uptime", up, sizeof up);
    printf("\n=== hvfabric guest: Linux %s %s, %lu MiB RAM, up %.*s s ===\n", u.release,
           u.machine, (unsigned long)(si.totalram * si.mem_unit >> 20),
           (int)strcspn(up, " "), up);
    printf("busybox sh; 'hvbox' lists hvfabric's own tools (traffic, echod, stress, ...)\n");
    fflush(stdout);
}

static pid_t spawn_shell(const char *tty, const char *command)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_UNBLOCK, &all, NULL);
    setsid();
    int fd = open(tty, O_RDWR);
    if (fd < 0)
        fd = open("/dev/console", O_RDWR);
    if (fd >= 0) {
        ioctl(fd, TIOCSCTTY, 0);
        dup2(fd, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        if (fd > 2)
            close(fd);
    }
    /* "-sh": a login shell, which reads /etc/profile (hvbox's applets that win); on a disk
     * root a plain shell, so that the disk's /etc/profile keeps init's PATH (its own tools
     * first, then ours in /run/hv: poweroff, reboot, busybox's applets) */
    char *name = g_disk_root ? "sh" : "-sh";
    char *argv_i[] = {name, NULL};
    char *argv_c[] = {name, "-c", (char *)command, NULL};
    char **argv = command ? argv_c : argv_i;
    execv("/bin/sh", argv);
    _exit(sh_main(command ? 3 : 1, argv));
}

static void shutdown_system(int how)
{
    printf("init: %s\n", how == RB_POWER_OFF ? "powering off" : "rebooting");
    fflush(stdout);
    kill(-1, SIGTERM);
    sync();
    reboot(how);
    _exit(1);
}

int init_main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    if (getpid() != 1) {
        errorf("init: must run as PID 1");
        return 1;
    }
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    reboot(RB_DISABLE_CAD); /* Ctrl-Alt-Del sends SIGINT to us instead */

    mount_fs("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755");
    mount_fs("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_fs("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mount_fs("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    /* fds 0-2 come from /dev/console, opened by the kernel before devtmpfs existed */
    if (fcntl(1, F_GETFD) < 0) {
        int fd = open("/dev/console", O_RDWR);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2)
                close(fd);
        }
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin", 1);
    setenv("ENV", "/etc/profile", 0);
    setenv("PS1", "\\h:\\w\\$ ", 0);
    setenv("HOME", "/", 0);
    read_file("/proc/cmdline", g_cmdline, sizeof g_cmdline);
    set_wall_clock();
    switch_to_disk_root();

    char host[65] = "hv";
    cmdline_param("hostname", host, sizeof host);
    sethostname(host, strlen(host));

    agent_boot(); /* hv exec: devpts, the agent (agent.c) */

    struct in_addr lo;
    parse_ipv4("127.0.0.1", &lo);
    net_if_set_addr("lo", lo, 8);
    net_if_up("lo", 1);
    net_configure_from_cmdline(g_cmdline);
    write_name_files();

    banner();

    char tty[64];
    console_device(tty, sizeof tty);
    static char run[2048];
    const char *once = cmdline_param("hv.run", run, sizeof run) ? run : NULL;
    pid_t shell = spawn_shell(tty, once);
    uint64_t started = now_ns();

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&all, &si);
        if (sig == SIGUSR1 || sig == SIGUSR2)
            shutdown_system(RB_POWER_OFF);
        if (sig == SIGINT || sig == SIGTERM)
            shutdown_system(RB_AUTOBOOT);
        if (sig != SIGCHLD)
            continue;
        int status;
        pid_t pid;
        int shell_died = 0;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
            if (pid == shell)
                shell_died = 1;
        if (!shell_died)
            continue;
        if (!once && now_ns() - started < 1000000000ull)
            sleep(1); /* a shell that dies at once must not spin */
        once = NULL;
        shell = spawn_shell(tty, NULL);
        started = now_ns();
    }
}
