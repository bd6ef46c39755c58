/* /init of the benchmark's C-original mini-initramfs. The C original's storage-init cannot
 * load kernel modules (it expects the drivers built in, or udev to load them), so this loads
 * the same modules our storage-init loads on the benchmark's disk, dependencies first, from
 * /etc/c-original-modules (one path per line, written by tests/vm/c_original.py), then execs
 * the C original as PID 1. Built static, so it adds no library to the image. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define LIST "/etc/c-original-modules"
#define STORAGE_INIT "/usr/sbin/initoverlayfs"

int main(void) {
  FILE *list = fopen(LIST, "r");
  if (!list) {
    fprintf(stderr, "c-original-init: cannot open %s: %s\n", LIST, strerror(errno));
  } else {
    char path[512];
    while (fgets(path, sizeof path, list)) {
      path[strcspn(path, "\n")] = '\0';
      if (!path[0])
        continue;
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST))
        fprintf(stderr, "c-original-init: loading %s: %s\n", path, strerror(errno));
      if (fd >= 0)
        close(fd);
    }
    fclose(list);
  }
  char *argv[] = {STORAGE_INIT, NULL}; /* no argument: an argument means systemd mode */
  execv(STORAGE_INIT, argv);
  fprintf(stderr, "c-original-init: exec %s: %s\n", STORAGE_INIT, strerror(errno));
  return 1;
}
