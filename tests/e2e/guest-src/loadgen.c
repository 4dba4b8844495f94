/* Guest-side block load generator for the benchmarks (static, no deps):
 *   loadgen DEV read|write|randread|randwrite BS QD SECONDS
 * QD threads each keep one O_DIRECT request in flight (pread/pwrite) over the
 * first GiB of DEV; prints IOPS, MB/s and mean latency on one line. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char* dev;
static int do_write, do_random;
static size_t bs;
static double seconds;
static uint64_t span;

struct result { uint64_t ops; double lat_sum; };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void* worker(void* arg) {
  struct result* r = arg;
  int fd = open(dev, (do_write ? O_RDWR : O_RDONLY) | O_DIRECT);
  if (fd < 0) { perror("open"); exit(1); }
  void* buf;
  if (posix_memalign(&buf, 4096, bs)) exit(1);
  memset(buf, 0x5a, bs);
  unsigned seed = (unsigned)(uintptr_t)arg;
  uint64_t blocks = span / bs, seq = (uint64_t)(uintptr_t)arg % blocks;
  double end = now() + seconds;
  for (;;) {
    double t0 = now();
    if (t0 >= end) break;
    uint64_t b = do_random ? (((uint64_t)rand_r(&seed) << 16) ^ (uint64_t)rand_r(&seed)) % blocks : (seq++ % blocks);
    ssize_t n = do_write ? pwrite(fd, buf, bs, (off_t)(b * bs)) : pread(fd, buf, bs, (off_t)(b * bs));
    if (n != (ssize_t)bs) { perror("io"); exit(1); }
    r->lat_sum += now() - t0;
    r->ops++;
  }
  close(fd);
  return NULL;
}

int main(int argc, char** argv) {
  if (argc != 6) { fprintf(stderr, "usage: loadgen DEV read|write|randread|randwrite BS QD SECONDS\n"); return 2; }
  dev = argv[1];
  do_write = strstr(argv[2], "write") != NULL;
  do_random = strncmp(argv[2], "rand", 4) == 0;
  bs = (size_t)atol(argv[3]);
  int qd = atoi(argv[4]);
  seconds = atof(argv[5]);
  int fd = open(dev, O_RDONLY);
  if (fd < 0) { perror(dev); return 1; }
  off_t size = lseek(fd, 0, SEEK_END);
  close(fd);
  span = (uint64_t)size < (1ull << 30) ? (uint64_t)size : (1ull << 30);
  pthread_t th[256];
  struct result res[256];
  if (qd < 1 || qd > 256 || bs == 0 || span < bs) return 2;
  memset(res, 0, sizeof res);
  double t0 = now();
  for (int i = 0; i < qd; i++) pthread_create(&th[i], NULL, worker, &res[i]);
  uint64_t ops = 0;
  double lat = 0;
  for (int i = 0; i < qd; i++) { pthread_join(th[i], NULL); ops += res[i].ops; lat += res[i].lat_sum; }
  double el = now() - t0;
  printf("LOADGEN %s bs=%zu qd=%d: %.0f IOPS %.1f MB/s lat_us %.1f\n", argv[2], bs, qd,
         (double)ops / el, (double)ops * (double)bs / el / 1e6, ops ? lat / (double)ops * 1e6 : 0.0);
  return 0;
}
