// Plumbing shared by the examples, not part of the library's API: each
// example runs its two sides as two processes of one program. The parent
// forks the peer (before it creates any engine), and the two talk over a pair
// of pipes, one text line at a time ("READY 0x7f.. 4096", "CHECK", "OK"):
// ADXL has no discovery, so how the server's buffer address reaches the
// client is up to the application. Here it is a pipe; across hosts it would
// be your own RPC, a config file, a key-value store...
//
// C++11, POSIX only. Copy the example files, not necessarily this one.
#ifndef LLMDD_EXAMPLES_EXAMPLE_PEER_H_
#define LLMDD_EXAMPLES_EXAMPLE_PEER_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace example {

// The peer process as the parent sees it.
struct Peer {
  pid_t pid = -1;
  int to = -1;    // write lines to the peer
  int from = -1;  // read the peer's lines
};

// Forks; the child runs role(in_fd, out_fd) and exits with its return value.
// The child dies with the parent (PR_SET_PDEATHSIG). False if fork failed.
inline bool StartPeer(int (*role)(int in_fd, int out_fd), Peer *peer) {
  int down[2], up[2];
  if (pipe(down) != 0) return false;
  if (pipe(up) != 0) {
    close(down[0]);
    close(down[1]);
    return false;
  }
  fflush(stdout);
  fflush(stderr);
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);
    close(down[1]);
    close(up[0]);
    const int rc = role(down[0], up[1]);
    fflush(stdout);
    _exit(rc);
  }
  close(down[0]);
  close(up[1]);
  peer->pid = pid;
  peer->to = down[1];
  peer->from = up[0];
  return true;
}

inline bool SendLine(int fd, const std::string &line) {
  const std::string text = line + "\n";
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Reads one line (without '\n'); false on end of file, error or timeout.
// Byte by byte: these are a few short lines.
inline bool ReadLine(int fd, std::string *line, int timeout_ms = 60000) {
  line->clear();
  for (;;) {
    pollfd p;
    p.fd = fd;
    p.events = POLLIN;
    p.revents = 0;
    const int ready = poll(&p, 1, timeout_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) return false;
    char c = 0;
    const ssize_t n = read(fd, &c, 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    if (c == '\n') return true;
    *line += c;
  }
}

// Closes the pipes (the peer reads end of file) and waits for its exit code;
// -1 if it did not exit normally within timeout_ms (it is killed then).
inline int FinishPeer(Peer *peer, int timeout_ms = 30000) {
  if (peer->to >= 0) close(peer->to);
  if (peer->from >= 0) close(peer->from);
  peer->to = peer->from = -1;
  int status = 0;
  for (int waited = 0; waited < timeout_ms; waited += 10) {
    if (waitpid(peer->pid, &status, WNOHANG) == peer->pid)
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    usleep(10000);
  }
  kill(peer->pid, SIGKILL);
  waitpid(peer->pid, &status, 0);
  return -1;
}

// A TCP port on 127.0.0.1 that is free right now (the kernel picks it).
inline int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in addr = sockaddr_in();
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) == 0)
    port = ntohs(addr.sin_port);
  close(fd);
  return port;
}

// The byte both sides expect at offset i of a buffer filled with `seed`.
inline unsigned char Pattern(unsigned seed, size_t i) {
  return static_cast<unsigned char>((i * 131 + seed * 7 + (i >> 8)) & 0xFF);
}

}  // namespace example

#endif  // LLMDD_EXAMPLES_EXAMPLE_PEER_H_
