/* cloned: what a guest does when hv tells it it is a clone (restored from a snapshot with new
 * NICs; hv runs it through the agent, vm.exec: docs/SNAPSHOTS.md "Clones: the guest's side").
 *
 *   cloned NAME [IFACE=MAC ...] [dhcp | IFACE=dhcp | IFACE=ADDR[/PREFIX][,GATEWAY] ...]
 *
 * The steps, in this order, stopping at the first that fails:
 *   1. each IFACE=MAC: IFACE takes MAC (net.c: live on virtio-net; down, set, up on a driver
 *      that refuses while up)                          cloned: eth0 52:54:00:c1:0e:03
 *   2. every IPv4 address of each IFACE named (by a MAC or an address, eth0 for a bare dhcp
 *      with no MAC) removed, the routes through them with them
 *                                                      cloned: eth0 dropped 10.0.0.100/24
 *                                                      ("dropped none" if it had none)
 *   3. the host name set to NAME (1-63 of a-z A-Z 0-9 . -)  cloned: hostname web-3
 *   4. /etc/hv/cloned, if it is there and executable: the image's own reaction (new keys,
 *      daemons restarted), run with our arguments (NAME ...) and HV_CLONE_NAME=NAME in its
 *      environment, its output ours; it must exit 0    cloned: /etc/hv/cloned exit 0
 *      (nothing printed when there is none; not run when cloned is itself run by the hook,
 *      that is with HV_CLONE_NAME set)
 *   5. the addresses, in argument order: IFACE=dhcp, DHCP as the dhcp applet does (dhcp.c,
 *      10 s; it sends NAME as option 12)               dhcp: eth0 bound 10.0.0.101/24 ...
 *      a bare "dhcp": each IFACE given a MAC (eth0 if none);
 *      IFACE=ADDR[/PREFIX][,GATEWAY]: the address (/24 without a prefix), IFACE up, a
 *      default route via GATEWAY                       cloned: eth0 10.0.0.44/24 via 10.0.0.1
 * and last                                             cloned: web-3 done in 35 ms
 * Every line on stdout, flushed as it is printed. Exit status 0; 1 if a step failed, with
 * "cloned: STEP: why" on stderr ("cloned: eth1 MAC 52:54:00:c1:0e:03: No such device",
 * "cloned: eth0 dhcp: no lease", "cloned: /etc/hv/cloned exit 3"; the steps after it are
 * not done); 2 for bad arguments (the usage line, then what is wrong).
 */
#include "hv.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <net/if.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define HOOK "/etc/hv/cloned"
#define MAX_ARGS 16

struct mac_arg {
    char ifname[IFNAMSIZ];
    uint8_t mac[6];
};

struct addr_arg {
    char ifname[IFNAMSIZ];
    int dhcp, prefix, has_gw;
    struct in_addr addr, gw;
};

struct plan {
    struct mac_arg macs[MAX_ARGS];
    struct addr_arg addrs[MAX_ARGS];
    char ifaces[2 * MAX_ARGS][IFNAMSIZ]; /* each interface named, once, in order */
    int nmacs, naddrs, nifaces;
};

static int valid_hostname(const char *s)
{
    size_t n = strlen(s);
    if (n < 1 || n > 63 || s[0] == '-' || s[0] == '.')
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.')
            return 0;
    return 1;
}

static void add_iface(struct plan *p, const char *ifname)
{
    for (int i = 0; i < p->nifaces; i++)
        if (!strcmp(p->ifaces[i], ifname))
            return;
    snprintf(p->ifaces[p->nifaces++], IFNAMSIZ, "%s", ifname);
}

static int bad(const char *arg, const char *why)
{
    usage_error("cloned");
    errorf("cloned: '%s': %s", arg, why);
    return 2;
}

/* ADDR[/PREFIX][,GATEWAY] into a */
static int parse_static(const char *value, struct addr_arg *a)
{
    char buf[64];
    snprintf(buf, sizeof buf, "%s", value);
    char *comma = strchr(buf, ',');
    if (comma) {
        *comma = 0;
        if (parse_ipv4(comma + 1, &a->gw) < 0)
            return -1;
        a->has_gw = 1;
    }
    a->prefix = 24;
    return parse_cidr(buf, &a->addr, &a->prefix);
}

static int parse_args(int argc, char **argv, struct plan *p)
{
    int dhcp_all = 0;
    memset(p, 0, sizeof *p);
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i], *eq = strchr(arg, '=');
        if (!strcmp(arg, "dhcp")) {
            dhcp_all = 1;
            continue;
        }
        if (!eq || eq == arg || eq - arg >= IFNAMSIZ)
            return bad(arg, "give IFACE=MAC, IFACE=dhcp, IFACE=ADDR/PREFIX[,GW] or dhcp");
        if (p->nmacs == MAX_ARGS || p->naddrs == MAX_ARGS)
            return bad(arg, "too many arguments");
        char ifname[IFNAMSIZ];
        snprintf(ifname, sizeof ifname, "%.*s", (int)(eq - arg), arg);
        const char *value = eq + 1;
        if (strchr(value, ':')) {
            struct mac_arg *m = &p->macs[p->nmacs++];
            if (net_parse_mac(value, m->mac) < 0)
                return bad(arg, "not a MAC (six hex bytes, unicast, e.g. 52:54:00:12:34:56)");
            snprintf(m->ifname, IFNAMSIZ, "%s", ifname);
        } else {
            struct addr_arg *a = &p->addrs[p->naddrs++];
            snprintf(a->ifname, IFNAMSIZ, "%s", ifname);
            a->dhcp = !strcmp(value, "dhcp");
            if (!a->dhcp && parse_static(value, a) < 0)
                return bad(arg, "not ADDR[/PREFIX][,GATEWAY] (10.0.0.5/24,10.0.0.1)");
        }
        add_iface(p, ifname);
    }
    if (dhcp_all) {
        for (int i = 0; i < (p->nmacs ? p->nmacs : 1) && p->naddrs < MAX_ARGS; i++) {
            const char *ifname = p->nmacs ? p->macs[i].ifname : "eth0";
            struct addr_arg *a = &p->addrs[p->naddrs++];
            snprintf(a->ifname, IFNAMSIZ, "%s", ifname);
            a->dhcp = 1;
            add_iface(p, ifname);
        }
    }
    return 0;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("cloned: ", stdout);
    vprintf(fmt, ap);
    va_end(ap);
    fputc('\n', stdout);
    fflush(stdout);
}

static int failed(const char *step, const char *why)
{
    fflush(stdout);
    errorf("cloned: %s: %s", step, why);
    return 1;
}

/* Step 4: the image's hook, if any; 0 when there is none or it exited 0. */
static int run_hook(int argc, char **argv)
{
    if (getenv("HV_CLONE_NAME") || access(HOOK, X_OK) < 0)
        return 0;
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        return failed(HOOK, strerror(errno));
    if (pid == 0) {
        setenv("HV_CLONE_NAME", argv[1], 1);
        char *args[MAX_ARGS * 2 + 8];
        int n = 0;
        args[n++] = (char *)HOOK;
        for (int i = 1; i < argc && n < (int)(sizeof args / sizeof args[0]) - 1; i++)
            args[n++] = argv[i];
        args[n] = NULL;
        execv(HOOK, args);
        errorf("cloned: %s: %s", HOOK, strerror(errno));
        _exit(127);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return failed(HOOK, strerror(errno));
    char why[64];
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        say("%s exit 0", HOOK);
        return 0;
    }
    if (WIFEXITED(status))
        snprintf(why, sizeof why, "exit %d", WEXITSTATUS(status));
    else
        snprintf(why, sizeof why, "killed by signal %d", WTERMSIG(status));
    fflush(stdout);
    errorf("cloned: %s %s", HOOK, why);
    return 1;
}

static int dhcp_failed(const char *ifname)
{
    char step[IFNAMSIZ + 8];
    snprintf(step, sizeof step, "%s dhcp", ifname);
    return failed(step, "no lease");
}

static int static_addr(const struct addr_arg *a)
{
    char gw[INET_ADDRSTRLEN] = "", step[IFNAMSIZ + 32];
    snprintf(step, sizeof step, "%s %s/%d", a->ifname, inet_ntoa(a->addr), a->prefix);
    if (net_if_set_addr(a->ifname, a->addr, a->prefix) < 0 || net_if_up(a->ifname, 1) < 0)
        return failed(step, strerror(errno));
    if (a->has_gw) {
        inet_ntop(AF_INET, &a->gw, gw, sizeof gw);
        if (net_add_default_route(a->gw, a->ifname) < 0 && errno != EEXIST) {
            snprintf(step, sizeof step, "%s default route via %s", a->ifname, gw);
            return failed(step, strerror(errno));
        }
    }
    say("%s%s%s", step, gw[0] ? " via " : "", gw);
    return 0;
}

int ap_cloned(int argc, char **argv)
{
    struct plan p;
    if (argc < 2 || !valid_hostname(argv[1]))
        return argc < 2 ? usage_error("cloned") : bad(argv[1], "not a host name (a-z 0-9 . -)");
    int r = parse_args(argc, argv, &p);
    if (r)
        return r;
    uint64_t t0 = now_ns();
    for (int i = 0; i < p.nmacs; i++) {
        const struct mac_arg *m = &p.macs[i];
        char text[18];
        snprintf(text, sizeof text, "%02x:%02x:%02x:%02x:%02x:%02x", m->mac[0], m->mac[1],
                 m->mac[2], m->mac[3], m->mac[4], m->mac[5]);
        if (net_if_set_mac(m->ifname, m->mac) < 0 || net_if_up(m->ifname, 1) < 0) {
            char step[IFNAMSIZ + 32];
            snprintf(step, sizeof step, "%s MAC %s", m->ifname, text);
            return failed(step, strerror(errno));
        }
        say("%s %s", m->ifname, text);
    }
    for (int i = 0; i < p.nifaces; i++) {
        char removed[256];
        if (net_addr_flush(p.ifaces[i], removed, sizeof removed) < 0) {
            char step[IFNAMSIZ + 32];
            snprintf(step, sizeof step, "%s dropping its addresses", p.ifaces[i]);
            return failed(step, strerror(errno));
        }
        say("%s dropped %s", p.ifaces[i], removed[0] ? removed : "none");
    }
    if (sethostname(argv[1], strlen(argv[1])) < 0)
        return failed("hostname", strerror(errno));
    say("hostname %s", argv[1]);
    if (run_hook(argc, argv))
        return 1;
    for (int i = 0; i < p.naddrs; i++) {
        const struct addr_arg *a = &p.addrs[i];
        if (a->dhcp ? net_dhcp(a->ifname, 10) < 0 && dhcp_failed(a->ifname) : static_addr(a))
            return 1;
    }
    say("%s done in %llu ms", argv[1], (unsigned long long)((now_ns() - t0) / 1000000));
    return 0;
}
