/*
 * The web server of critest's look-alike nginx, httpd and hostnet-nginx images: it answers
 * every HTTP request with 200 and a small page, one connection at a time.
 *
 * What critest checks of those images, and how this program gives it:
 *  - HTTP 200 on port 80 (hostnet-nginx: 12003): the port is $LISTEN_PORT, default 80.
 *  - nginx writes its pid to /var/run/nginx.pid (HostPID test): every role writes
 *    /var/run/<role>.pid.
 *  - `pidof nginx` finds it: the image installs this binary as /usr/sbin/nginx, so the kernel's
 *    comm is "nginx".
 *  - /proc/1/cmdline holds "master process" (ContainerPID test), as nginx rewrites its title:
 *    started as "nginx", the program execs itself again with argv[0] set to nginx's title. The
 *    title must be argv[0], as busybox grep stops at the first NUL of a line.
 *  - the httpd container's log contains "httpd": the start-up line names the role, the base
 *    name of argv[0] (httpd-foreground).
 *
 * As PID 1 it gets no default signal actions: SIGTERM, SIGINT and SIGQUIT end it at once.
 * Built static (`cc -static`), so the image needs no libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define NGINX_TITLE "nginx: master process"
#define BODY "<html><body><h1>It works (corral critest web server)</h1></body></html>\n"

static void quit(int sig) {
	(void)sig;
	_exit(0);
}

static const char *base_name(const char *path) {
	const char *slash = strrchr(path, '/');
	return slash ? slash + 1 : path;
}

/* Re-executes this binary with nginx's process title as argv[0]: "nginx: master process
 * nginx -g daemon off;" for the image's command `nginx -g "daemon off;"`. */
static void set_nginx_title(int argc, char **argv) {
	char exe[4096];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n < 0) {
		perror("nginx: readlink /proc/self/exe");
		return;
	}
	exe[n] = '\0';
	size_t len = strlen(NGINX_TITLE) + 1;
	for (int i = 0; i < argc; i++)
		len += strlen(argv[i]) + 1;
	char *title = malloc(len);
	if (title == NULL)
		return;
	strcpy(title, NGINX_TITLE);
	for (int i = 0; i < argc; i++) {
		strcat(title, " ");
		strcat(title, i == 0 ? base_name(argv[0]) : argv[i]);
	}
	char *args[] = {title, NULL};
	execv(exe, args);
	perror("nginx: exec");
	free(title);
}

static void write_pid_file(const char *role) {
	char path[256];
	snprintf(path, sizeof(path), "/var/run/%s.pid", role);
	FILE *f = fopen(path, "w");
	if (f == NULL) {
		fprintf(stderr, "%s: cannot write %s: %s\n", role, path, strerror(errno));
		return;
	}
	fprintf(f, "%d\n", (int)getpid());
	fclose(f);
}

/* Reads the request head (up to the blank line, or what arrives before the timeout), answers
 * 200 and logs the request line to stdout, as an access log. */
static void serve(int conn, const char *role) {
	char req[4096];
	size_t got = 0;
	while (got < sizeof(req) - 1) {
		ssize_t n = read(conn, req + got, sizeof(req) - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
		req[got] = '\0';
		if (strstr(req, "\r\n\r\n") != NULL || strstr(req, "\n\n") != NULL)
			break;
	}
	req[got] = '\0';
	char *eol = strpbrk(req, "\r\n");
	if (eol != NULL)
		*eol = '\0';
	char head[256];
	int len = snprintf(head, sizeof(head),
			   "HTTP/1.1 200 OK\r\nServer: %s\r\nContent-Type: text/html\r\n"
			   "Content-Length: %zu\r\nConnection: close\r\n\r\n",
			   role, strlen(BODY));
	int head_only = strncmp(req, "HEAD ", 5) == 0;
	if (write(conn, head, (size_t)len) == len && !head_only) {
		if (write(conn, BODY, strlen(BODY)) < 0) {
			/* the client went away; nothing to do */
		}
	}
	printf("%s: \"%s\" 200\n", role, req);
	fflush(stdout);
}

int main(int argc, char **argv) {
	const char *role = base_name(argv[0]);
	if (strncmp(argv[0], NGINX_TITLE, strlen(NGINX_TITLE)) == 0)
		role = "nginx";
	else if (strcmp(role, "nginx") == 0)
		set_nginx_title(argc, argv);

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = quit;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGQUIT, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);

	int port = 80;
	const char *env = getenv("LISTEN_PORT");
	if (env != NULL && *env != '\0')
		port = atoi(env);
	if (port <= 0 || port > 65535) {
		fprintf(stderr, "%s: bad LISTEN_PORT %s\n", role, env);
		return 2;
	}

	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0) {
		perror("socket");
		return 1;
	}
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in addr;
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_addr.s_addr = htonl(INADDR_ANY);
	addr.sin_port = htons((unsigned short)port);
	if (bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		fprintf(stderr, "%s: bind port %d: %s\n", role, port, strerror(errno));
		return 1;
	}
	if (listen(s, 64) < 0) {
		perror("listen");
		return 1;
	}
	write_pid_file(role);
	fprintf(stderr, "%s: listening on port %d, pid %d\n", role, port, (int)getpid());

	for (;;) {
		int conn = accept4(s, NULL, NULL, SOCK_CLOEXEC);
		if (conn < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			perror("accept");
			return 1;
		}
		/* One slow client must not stall the others for long. */
		struct timeval tv = {.tv_sec = 5, .tv_usec = 0};
		setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		serve(conn, role);
		close(conn);
	}
}
