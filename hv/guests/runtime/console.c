#include "console.h"
#include "sbi.h"
#include "str.h"

enum { CON_UNKNOWN, CON_DBCN, CON_LEGACY };
static int con_mode = CON_UNKNOWN;

static void console_probe(void)
{
    con_mode = sbi_probe_extension(SBI_EXT_DBCN) ? CON_DBCN : CON_LEGACY;
}

bool console_has_dbcn(void)
{
    if (con_mode == CON_UNKNOWN)
        console_probe();
    return con_mode == CON_DBCN;
}

void console_write(const char *buf, size_t len)
{
    if (con_mode == CON_UNKNOWN)
        console_probe();
    if (con_mode == CON_DBCN) {
        /* DBCN takes a physical address: the runtime runs with MMU off or identity-mapped RAM. */
        while (len) {
            struct sbiret r = sbi_debug_console_write(len, (unsigned long)buf);
            if (r.error || r.value <= 0 || (size_t)r.value > len)
                break;
            buf += r.value;
            len -= (size_t)r.value;
        }
        if (!len)
            return;
    }
    while (len--)
        sbi_legacy_putchar(*buf++);
}

void putchar_(char c) { console_write(&c, 1); }

int puts(const char *s)
{
    size_t n = strlen(s);
    console_write(s, n);
    console_write("\n", 1);
    return (int)n + 1;
}

/* ---- formatter ---- */

static int emit_str(fmt_emit_fn emit, void *ctx, const char *s, size_t len, int width, bool left)
{
    int n = 0;
    int pad = width > (int)len ? width - (int)len : 0;
    if (!left)
        for (; pad > 0; pad--, n++)
            emit(ctx, ' ');
    for (size_t i = 0; i < len; i++, n++)
        emit(ctx, s[i]);
    for (; pad > 0; pad--, n++)
        emit(ctx, ' ');
    return n;
}

static int emit_num(fmt_emit_fn emit, void *ctx, unsigned long long v, bool neg, unsigned base,
                    bool upper, int width, bool zero, bool left, const char *prefix)
{
    char tmp[24];
    int len = 0;
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    do {
        tmp[len++] = digits[v % base];
        v /= base;
    } while (v);
    int plen = (int)strlen(prefix) + (neg ? 1 : 0);
    int pad = width > len + plen ? width - len - plen : 0;
    int n = 0;
    if (!left && !zero)
        for (; pad > 0; pad--, n++)
            emit(ctx, ' ');
    if (neg) {
        emit(ctx, '-');
        n++;
    }
    for (const char *p = prefix; *p; p++, n++)
        emit(ctx, *p);
    if (!left && zero)
        for (; pad > 0; pad--, n++)
            emit(ctx, '0');
    while (len)
        emit(ctx, tmp[--len]), n++;
    for (; pad > 0; pad--, n++)
        emit(ctx, ' ');
    return n;
}

int fmt_format(fmt_emit_fn emit, void *ctx, const char *fmt, va_list ap)
{
    int n = 0;
    for (; *fmt; fmt++) {
        if (*fmt != '%') {
            emit(ctx, *fmt);
            n++;
            continue;
        }
        fmt++;
        bool zero = false, left = false;
        for (;; fmt++) {
            if (*fmt == '0')
                zero = true;
            else if (*fmt == '-')
                left = true;
            else
                break;
        }
        int width = 0;
        if (*fmt == '*') {
            width = va_arg(ap, int);
            if (width < 0) {
                left = true;
                width = -width;
            }
            fmt++;
        } else {
            while (*fmt >= '0' && *fmt <= '9')
                width = width * 10 + (*fmt++ - '0');
        }
        int lng = 0; /* 0: int, 1: long / size_t, 2: long long */
        for (;; fmt++) {
            if (*fmt == 'l')
                lng++;
            else if (*fmt == 'z')
                lng = 1;
            else
                break;
        }
        switch (*fmt) {
        case 'd':
        case 'i': {
            long long v = lng >= 2 ? va_arg(ap, long long) : lng ? va_arg(ap, long) : va_arg(ap, int);
            unsigned long long mag = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
            n += emit_num(emit, ctx, mag, v < 0, 10, false, width, zero, left, "");
            break;
        }
        case 'u':
        case 'x':
        case 'X': {
            unsigned long long v = lng >= 2 ? va_arg(ap, unsigned long long)
                                   : lng    ? va_arg(ap, unsigned long)
                                            : va_arg(ap, unsigned int);
            unsigned base = *fmt == 'u' ? 10 : 16;
            n += emit_num(emit, ctx, v, false, base, *fmt == 'X', width, zero, left, "");
            break;
        }
        case 'p': {
            unsigned long v = (unsigned long)va_arg(ap, void *);
            n += emit_num(emit, ctx, v, false, 16, false, width, zero, left, "0x");
            break;
        }
        case 'c': {
            char c = (char)va_arg(ap, int);
            n += emit_str(emit, ctx, &c, 1, width, left);
            break;
        }
        case 's': {
            const char *s = va_arg(ap, const char *);
            if (!s)
                s = "(null)";
            n += emit_str(emit, ctx, s, strlen(s), width, left);
            break;
        }
        case '%':
            emit(ctx, '%');
            n++;
            break;
        case '\0':
            return n;
        default: /* unknown conversion: print it verbatim */
            emit(ctx, '%');
            emit(ctx, *fmt);
            n += 2;
            break;
        }
    }
    return n;
}

/* printf: batch output into a stack buffer (identity-mapped RAM, so DBCN can read it). */
struct outbuf {
    char buf[128];
    size_t len;
};

static void outbuf_emit(void *ctx, char c)
{
    struct outbuf *o = ctx;
    o->buf[o->len++] = c;
    if (o->len == sizeof(o->buf)) {
        console_write(o->buf, o->len);
        o->len = 0;
    }
}

int vprintf(const char *fmt, va_list ap)
{
    struct outbuf o;
    o.len = 0;
    int n = fmt_format(outbuf_emit, &o, fmt, ap);
    if (o.len)
        console_write(o.buf, o.len);
    return n;
}

int printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

struct strbuf {
    char *buf;
    size_t size;
    size_t len;
};

static void strbuf_emit(void *ctx, char c)
{
    struct strbuf *s = ctx;
    if (s->len + 1 < s->size)
        s->buf[s->len] = c;
    s->len++;
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct strbuf s = {buf, size, 0};
    int n = fmt_format(strbuf_emit, &s, fmt, ap);
    if (size)
        buf[s.len < size ? s.len : size - 1] = '\0';
    return n;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
