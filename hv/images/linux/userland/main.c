/* Multi-call entry point: picks the applet from argv[0] ("hvbox ping ..." works too). */
#include "hv.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const struct applet applets[] = {
    {"sh", sh_main, "[-c CMDLINE]             the shell (this prompt)"},
    {"init", init_main, "                         PID 1: mounts, network from ip=, shell loop"},
    {"help", sh_builtin_help, "[CMD]                  list commands, or show one's usage"},
    {"echo", ap_echo, "[-n] [ARG...]          print arguments"},
    {"cat", ap_cat, "[FILE...]              print files (or stdin)"},
    {"ls", ap_ls, "[-l] [-a] [PATH...]    list directories"},
    {"mkdir", ap_mkdir, "[-p] DIR...            create directories"},
    {"rm", ap_rm, "FILE...                remove files (or empty directories)"},
    {"mount", ap_mount, "[-t TYPE] [-o ro] DEV DIR   mount (no args: list mounts)"},
    {"umount", ap_umount, "DIR                    unmount"},
    {"dd", ap_dd, "[if=F] [of=F] [bs=N] [count=N] [skip=N] [seek=N] [conv=fsync]   copy blocks, report MB/s"},
    {"sync", ap_sync, "                       flush file system buffers"},
    {"dmesg", ap_dmesg, "                       print the kernel log"},
    {"ps", ap_ps, "                       list processes"},
    {"kill", ap_kill, "[-SIG] PID...          send a signal (default TERM)"},
    {"uname", ap_uname, "[-a]                   kernel name and version"},
    {"sleep", ap_sleep, "SECONDS                sleep (fractions allowed)"},
    {"true", ap_true, "                       exit 0 (also the stress test's tiny program)"},
    {"false", ap_false, "                       exit 1"},
    {"ip", ap_ip, "addr|link|route [add|set|del ...]   show/configure interfaces, VLANs"},
    {"dhcp", ap_dhcp, "[-t SEC] IFACE         DHCP lease: address, netmask, default route, DNS"},
    {"ping", ap_ping, "[-c N] [-i SEC] [-s BYTES] [-W SEC] [-q] ADDR   ICMP echo, RTT min/avg/max"},
    {"echod", ap_echod, "[-u] [-t] [PORT]       UDP and/or TCP echo server (default both, port 7)"},
    {"echoc", ap_echoc, "[-u|-t] [-c N] [-s BYTES] ADDR [PORT]   echo client, reports RTT"},
    {"traffic", ap_traffic, "send|recv [-u|-t] ...  throughput test (see: help traffic)"},
    {"poweroff", ap_poweroff, "                       sync and power off"},
    {"reboot", ap_reboot, "                       sync and reboot"},
    {"vsockecho", ap_vsockecho, "PORT                   listen on AF_VSOCK, echo each connection"},
    {"vsockcat", ap_vsockcat, "CID PORT [TEXT]        vsock client: send TEXT or stdin, print replies"},
    {"stress", ap_stress, "[-n ITER] [-p PAGES]   fork/exec/exit + page-fault stress, summary"},
    {"tty", ap_tty, "                       the terminal on stdin"},
    {"cloned", ap_cloned, "NAME [IFACE=MAC...] [dhcp|IFACE=dhcp|IFACE=ADDR/PREFIX[,GW]...]   a clone's new MAC, name, address"},
    {"hv-agent", ap_agent, "[-u PATH] [-p PORT]     the host's agent (hv exec, hv cp): vsock or unix socket"},
    {NULL, NULL, NULL},
};

const struct applet *find_applet(const char *name)
{
    for (const struct applet *a = applets; a->name; a++)
        if (strcmp(a->name, name) == 0)
            return a;
    return NULL;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

int run_applet(int argc, char **argv)
{
    const struct applet *a = find_applet(base_name(argv[0]));
    if (!a) {
        errorf("%s: no such applet", argv[0]);
        return 127;
    }
    return a->fn(argc, argv);
}

int main(int argc, char **argv)
{
    if (argc < 1)
        return 1;
    const char *name = base_name(argv[0]);
    if (strcmp(name, "hvbox") == 0) {
        if (argc < 2)
            return sh_builtin_help(1, argv);
        argv++;
        argc--;
        name = base_name(argv[0]);
    }
    const struct applet *a = find_applet(name);
    if (!a)
        return sh_main(argc, argv);   /* unknown name: behave as the shell */
    return a->fn(argc, argv);
}

uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s)
        return -1;
    switch (*end) {
    case 'k': case 'K': v <<= 10; end++; break;
    case 'm': case 'M': v <<= 20; end++; break;
    case 'g': case 'G': v <<= 30; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b')
        end++;
    if (*end)
        return -1;
    *out = v;
    return 0;
}

void errorf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int usage_error(const char *name)
{
    const struct applet *a = find_applet(name);
    if (a)
        fprintf(stderr, "usage: %s %s\n", a->name, a->usage);
    return 2;
}

int parse_ipv4(const char *s, struct in_addr *out)
{
    return inet_pton(AF_INET, s, out) == 1 ? 0 : -1;
}
