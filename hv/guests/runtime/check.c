#include "check.h"
#include "console.h"

int rt_passed, rt_failed;

void rt_check(const char *name, bool ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (ok) {
        rt_passed++;
        printf("PASS %s\n", name);
    } else {
        rt_failed++;
        printf("FAIL %s: ", name);
        vprintf(fmt, ap);
        printf("\n");
    }
    va_end(ap);
}
