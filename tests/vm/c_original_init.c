/* /init of the benchmark's C-original mini-initramfs. The C original's storage-init cannot
 * load kernel modules (it expects the drivers built in, or udev to load them), so this loads
 * the same modules our storage-init loads on the benchmark's disk, dependencies first, from
 * /etc/c-original-modules (one path per line, written by tests/vm/c_original.py), then execs
 * the C original as PID 1. Built static, so it adds no library to the image.
 * A path may be followed by tab-separated cpu: globs (the module's x86cpu table); the module
 * is then skipped unless one matches /sys/devices/system/cpu/modalias, as our storage-init
 * skips it, so both pay the same for the same modules. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#define LIST "/etc/c-original-modules"
#define STORAGE_INIT "/usr/sbin/initoverlayfs"

static char cpu[4096]; /* this CPU's modalias, read once; empty if unknown */

static void read_cpu_modalias(void) {
  if (mount("sysfs", "/sys", "sysfs", 0, NULL) != 0)
    return;
  FILE *f = fopen("/sys/devices/system/cpu/modalias", "r");
  if (f) {
    if (!fgets(cpu, sizeof cpu, f))
      cpu[0] = '\0';
    cpu[strcspn(cpu, "\n")] = '\0';
    fclose(f);
  }
  umount("/sys"); /* the C original mounts it itself */
}

/* Whether the module on this line (its path, then cpu: globs) is for this CPU. */
static int for_this_cpu(char *line) {
  char *globs = strchr(line, '\t');
  if (!globs)
    return 1;
  *globs++ = '\0';
  static int read_once;
  if (!read_once++)
    read_cpu_modalias();
  if (!cpu[0])
    return 1;
  for (char *glob = strtok(globs, "\t"); glob; glob = strtok(NULL, "\t"))
    if (fnmatch(glob, cpu, 0) == 0)
      return 1;
  return 0;
}

int main(void) {
  FILE *list = fopen(LIST, "r");
  if (!list) {
    fprintf(stderr, "c-original-init: cannot open %s: %s\n", LIST, strerror(errno));
  } else {
    char path[1024];
    while (fgets(path, sizeof path, list)) {
      path[strcspn(path, "\n")] = '\0';
      if (!path[0] || !for_this_cpu(path))
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
