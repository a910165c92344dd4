/*
 * rfile: a stock-liblam client of filed's remote file API (share/freq:
 * lam_rfopen, lam_rfread, lam_rfwrite, lam_rflseek, lam_rfclose,
 * lam_rfstat, lam_rffstat, lam_rfaccess, lam_rfmkdir, lam_rfrmdir,
 * lam_rfunlink, lam_rftruncate, lam_rfftruncate, lam_rfrename, lam_rfdup,
 * lam_rfdup2, lam_rfgetwd, lam_rfchdir, lam_rfsystem, lam_rfpathfind)
 * against the local daemon, for comparing Debian's C lamd with ours.
 *
 *   rfile DIR          DIR: an existing scratch directory, writable by us
 *                      and empty (or at least without a.txt, b.txt, c.txt,
 *                      sub, rel.txt, sys.txt, pwd.txt)
 *
 * One line per step on stdout, "what: ret=... errno=N (NAME)"; nothing
 * that differs between two daemons or two runs (descriptors are printed as
 * ok/-1, no pids, no times, no paths of the daemon's own).  The daemon's
 * working directory is changed (lam_rfchdir) and put back at the end.
 * The modes printed by stat lines are what filed's open/mkdir made under
 * the daemon's umask (Debian's C lamd runs with 0077: 0600 and 0700).
 * Exits 0 after kexit(0); 2 if kinit fails.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lam_config.h>
#include <freq.h>
#include <kreq.h>
#include <net.h>
#include <priority.h>
#include <terror.h>
#include <typical.h>
#include <etc_misc.h>

#ifndef MAXPATHLEN
#define MAXPATHLEN 4096
#endif

static const char *dir;		/* the scratch directory, as given */
static int node;		/* getnodeid() */

static const char *ename(int e)
{
	switch (e) {
	case 0: return "0";
	case ENOENT: return "ENOENT";
	case EBADF: return "EBADF";
	case EACCES: return "EACCES";
	case EEXIST: return "EEXIST";
	case ENOTDIR: return "ENOTDIR";
	case EISDIR: return "EISDIR";
	case EINVAL: return "EINVAL";
	case ENFILE: return "ENFILE";
	case ENOTEMPTY: return "ENOTEMPTY";
	case ECHILD: return "ECHILD";
	case EPERM: return "EPERM";
	case EFAULT: return "EFAULT";
	case ENAMETOOLONG: return "ENAMETOOLONG";
	case EBADREQUEST: return "EBADREQUEST";
	case ENOT_IMPLEMENTED: return "ENOT_IMPLEMENTED";
	case EMSGLEN: return "EMSGLEN";
	case ENOTATTACHED: return "ENOTATTACHED";
	case EBADNODE: return "EBADNODE";
	case EDEADNODE: return "EDEADNODE";
	case LAM_ERR_TO: return "LAM_ERR_TO";
	default: return "?";
	}
}

/* a descriptor: ok or -1, never its number */
static void pfd(const char *what, int fd, int e)
{
	printf("%s: ret=%s errno=%d (%s)\n", what, fd >= 0 ? "ok" : "-1", e, ename(e));
	fflush(stdout);
}

/* a plain return value */
static void pret(const char *what, long ret, int e)
{
	printf("%s: ret=%ld errno=%d (%s)\n", what, ret, e, ename(e));
	fflush(stdout);
}

static char *path(const char *name)
{
	static char buf[8][MAXPATHLEN];
	static int n;
	char *p = buf[n++ % 8];

	snprintf(p, MAXPATHLEN, "%s/%s", dir, name);
	return p;
}

/* "NODE:DIR/name", the node-prefixed form _fnparse understands */
static char *npath(const char *name)
{
	static char buf[4][MAXPATHLEN];
	static int n;
	char *p = buf[n++ % 4];

	snprintf(p, MAXPATHLEN, "%d:%s/%s", node, dir, name);
	return p;
}

static unsigned int fnv(const unsigned char *p, long n, unsigned int h)
{
	while (n-- > 0) {
		h ^= *p++;
		h *= 16777619u;
	}
	return h;
}

static void pstat(const char *what, int ret, int e, struct stat *st)
{
	if (ret < 0) {
		pret(what, ret, e);
		return;
	}
	printf("%s: ret=%d errno=%d (%s) size=%ld mode=%04o dir=%d reg=%d\n",
	       what, ret, e, ename(e), (long) st->st_size,
	       (unsigned) (st->st_mode & 07777), S_ISDIR(st->st_mode) ? 1 : 0,
	       S_ISREG(st->st_mode) ? 1 : 0);
	fflush(stdout);
}

static int do_stat(const char *what, const char *name)
{
	struct stat st;
	int ret;

	memset(&st, 0, sizeof(st));
	errno = 0;
	ret = lam_rfstat(name, (char *) &st);
	pstat(what, ret, errno, &st);
	return ret;
}

static int do_fstat(const char *what, int fd)
{
	struct stat st;
	int ret;

	memset(&st, 0, sizeof(st));
	errno = 0;
	ret = lam_rffstat(fd, (char *) &st);
	pstat(what, ret, errno, &st);
	return ret;
}

static int do_open(const char *what, const char *name, int4 flags, int4 mode)
{
	int fd;

	errno = 0;
	fd = lam_rfopen(name, flags, mode);
	pfd(what, fd, errno);
	return fd;
}

static int do_close(const char *what, int fd)
{
	int ret;

	errno = 0;
	ret = lam_rfclose(fd);
	pret(what, ret, errno);
	return ret;
}

static long do_write(const char *what, int fd, const char *buf, int4 len)
{
	long ret;

	errno = 0;
	ret = lam_rfwrite(fd, buf, len);
	pret(what, ret, errno);
	return ret;
}

/* read LEN bytes, print them (printable only) */
static void do_readshow(const char *what, int fd, int4 len)
{
	char buf[64];
	long ret, i;
	int e;

	memset(buf, 0, sizeof(buf));
	errno = 0;
	ret = lam_rfread(fd, buf, len);
	e = errno;
	if (ret < 0) {
		pret(what, ret, e);
		return;
	}
	printf("%s: ret=%ld errno=%d (%s) data=\"", what, ret, e, ename(e));
	for (i = 0; i < ret; ++i) {
		if (buf[i] == '\n')
			printf("\\n");
		else if (buf[i] >= 0x20 && buf[i] < 0x7f)
			putchar(buf[i]);
		else
			printf("\\x%02x", (unsigned char) buf[i]);
	}
	printf("\"\n");
	fflush(stdout);
}

static void simple(const char *what, int ret)
{
	pret(what, ret, errno);
}

#define CALL(what, expr) do { int r_; errno = 0; r_ = (expr); simple(what, r_); } while (0)

int main(int argc, char **argv)
{
	static char big[20000];
	static char rbuf[32768];
	char cwd0[MAXPATHLEN], wd[MAXPATHLEN], real[PATH_MAX];
	const char *head = "0123456789ABCDEFGHIJ";	/* 20 bytes */
	const char *tail = "tail\n";			/* 5 bytes */
	int fd, fd2, fd3, ret, i, e, have_cwd0;
	long n, total;
	unsigned int sum;
	struct stat st;
	FILE *f;

	if (argc != 2) {
		fprintf(stderr, "usage: rfile DIR\n");
		return 2;
	}
	dir = argv[1];
	setvbuf(stdout, NULL, _IOLBF, 0);

	if (kinit(PRCMD)) {
		printf("kinit: FAIL errno=%d (%s)\n", errno, ename(errno));
		return 2;
	}
	node = getnodeid();
	printf("kinit: ok\n");

	for (i = 0; i < (int) sizeof(big); ++i)
		big[i] = 'a' + (i % 26);

	/* 1. create, write three chunks (one of 20000 bytes), close */
	printf("== 1 write\n");
	fd = do_open("open wronly|creat|trunc (node-prefixed name)", npath("a.txt"),
		     LAM_O_WRONLY | LAM_O_CREAT | LAM_O_TRUNC, 0644);
	do_write("write 20", fd, head, 20);
	do_write("write 20000", fd, big, 20000);
	do_write("write 5", fd, tail, 5);
	do_close("close", fd);

	/* 2. read it back in chunks of 7000, lseek, read 5 */
	printf("== 2 read\n");
	fd = do_open("open rdonly", path("a.txt"), LAM_O_RDONLY, 0);
	total = 0;
	sum = 2166136261u;
	printf("reads of 7000:");
	for (i = 0; i < 10; ++i) {
		errno = 0;
		n = lam_rfread(fd, rbuf, 7000);
		e = errno;
		printf(" %ld", n);
		if (n < 0) {
			printf("(errno=%d %s)", e, ename(e));
			break;
		}
		if (n == 0)
			break;
		sum = fnv((unsigned char *) rbuf, n, sum);
		total += n;
	}
	printf("\n");
	{
		unsigned int want = 2166136261u;
		want = fnv((const unsigned char *) head, 20, want);
		want = fnv((const unsigned char *) big, 20000, want);
		want = fnv((const unsigned char *) tail, 5, want);
		printf("read total=%ld checksum=%08x matches=%d\n", total, sum,
		       sum == want ? 1 : 0);
	}
	errno = 0;
	n = lam_rflseek(fd, 10, SEEK_SET);
	pret("lseek 10 SEEK_SET", n, errno);
	do_readshow("read 5 at 10", fd, 5);
	errno = 0;
	n = lam_rflseek(fd, 0, SEEK_CUR);
	pret("lseek 0 SEEK_CUR", n, errno);
	errno = 0;
	n = lam_rflseek(fd, 0, SEEK_END);
	pret("lseek 0 SEEK_END", n, errno);
	do_readshow("read 5 at end", fd, 5);
	errno = 0;
	n = lam_rflseek(fd, -5, SEEK_END);
	pret("lseek -5 SEEK_END", n, errno);
	do_readshow("read 10 at end-5", fd, 10);
	errno = 0;
	n = lam_rflseek(fd, -100, SEEK_SET);
	pret("lseek -100 SEEK_SET", n, errno);
	errno = 0;
	n = lam_rflseek(fd, 0, 99);
	pret("lseek whence 99", n, errno);
	do_close("close", fd);

	/* 3. failing opens */
	printf("== 3 open errors\n");
	do_open("open missing rdonly", path("missing.txt"), LAM_O_RDONLY, 0);
	do_open("open existing creat|excl", path("a.txt"),
		LAM_O_WRONLY | LAM_O_CREAT | LAM_O_EXCL, 0644);
	do_open("open missing dir/file creat", path("nodir/x.txt"),
		LAM_O_WRONLY | LAM_O_CREAT, 0644);
	do_open("open dir wronly", dir, LAM_O_WRONLY, 0);
	{
		char nn[MAXPATHLEN];
		snprintf(nn, sizeof(nn), "n%d:%s/a.txt", node, dir);
		do_open("open \"nN:\"-prefixed name rdonly", nn, LAM_O_RDONLY, 0);
	}

	/* 4. stat, fstat, access */
	printf("== 4 stat/access\n");
	do_stat("stat a.txt", path("a.txt"));
	do_stat("stat a.txt (node-prefixed)", npath("a.txt"));
	do_stat("stat missing", path("missing.txt"));
	do_stat("stat DIR", dir);
	fd = do_open("open rdonly", path("a.txt"), LAM_O_RDONLY, 0);
	do_fstat("fstat open fd", fd);
	do_close("close", fd);
	CALL("access a.txt R_OK", lam_rfaccess(path("a.txt"), R_OK));
	CALL("access a.txt F_OK", lam_rfaccess(path("a.txt"), F_OK));
	CALL("access a.txt X_OK", lam_rfaccess(path("a.txt"), X_OK));
	CALL("access missing R_OK", lam_rfaccess(path("missing.txt"), R_OK));

	/* 5. mkdir, rmdir, unlink */
	printf("== 5 mkdir/rmdir/unlink\n");
	CALL("mkdir sub 0755", lam_rfmkdir(path("sub"), 0755));
	do_stat("stat sub", path("sub"));
	CALL("mkdir sub again", lam_rfmkdir(path("sub"), 0755));
	fd = do_open("open sub/f creat", path("sub/f"),
		     LAM_O_WRONLY | LAM_O_CREAT, 0600);
	do_close("close", fd);
	CALL("rmdir sub (not empty)", lam_rfrmdir(path("sub")));
	CALL("unlink sub (a dir)", lam_rfunlink(path("sub")));
	CALL("unlink sub/f", lam_rfunlink(path("sub/f")));
	CALL("rmdir sub", lam_rfrmdir(path("sub")));
	CALL("rmdir sub again", lam_rfrmdir(path("sub")));
	CALL("rmdir a.txt (a file)", lam_rfrmdir(path("a.txt")));
	CALL("unlink a.txt", lam_rfunlink(path("a.txt")));
	CALL("unlink a.txt again", lam_rfunlink(path("a.txt")));
	do_stat("stat a.txt", path("a.txt"));

	/* 6. truncate, ftruncate, rename */
	printf("== 6 truncate/rename\n");
	fd = do_open("open rdwr|creat", path("a.txt"),
		     LAM_O_RDWR | LAM_O_CREAT, 0644);
	do_write("write 20000", fd, big, 20000);
	CALL("truncate a.txt 1000", lam_rftruncate(path("a.txt"), 1000));
	do_stat("stat a.txt", path("a.txt"));
	CALL("ftruncate 50", lam_rfftruncate(fd, 50));
	do_fstat("fstat", fd);
	do_stat("stat a.txt", path("a.txt"));
	errno = 0;
	n = lam_rflseek(fd, 0, SEEK_CUR);
	pret("lseek 0 SEEK_CUR (after writing 20000, truncated)", n, errno);
	errno = 0;
	n = lam_rflseek(fd, 0, SEEK_SET);
	pret("lseek 0 SEEK_SET", n, errno);
	do_readshow("read 10", fd, 10);
	do_close("close", fd);
	CALL("truncate missing", lam_rftruncate(path("missing.txt"), 10));
	CALL("rename a.txt -> b.txt", lam_rfrename(path("a.txt"), path("b.txt")));
	do_stat("stat a.txt", path("a.txt"));
	do_stat("stat b.txt", path("b.txt"));
	CALL("rename missing -> c.txt", lam_rfrename(path("missing.txt"), path("c.txt")));
	{
		char from[MAXPATHLEN], to[MAXPATHLEN];
		snprintf(from, sizeof(from), "%d:%s/b.txt", node, dir);
		snprintf(to, sizeof(to), "%d:%s/c.txt", node + 1, dir);
		CALL("rename across nodes", lam_rfrename(from, to));
		snprintf(to, sizeof(to), "%d:%s/c.txt", node, dir);
		CALL("rename b.txt -> c.txt (both node-prefixed)", lam_rfrename(from, to));
		CALL("rename c.txt -> b.txt (plain)", lam_rfrename(path("c.txt"), path("b.txt")));
	}

	/* 7. dup, dup2 */
	printf("== 7 dup\n");
	fd = do_open("open b.txt rdonly", path("b.txt"), LAM_O_RDONLY, 0);
	do_readshow("read 5 via fd", fd, 5);
	errno = 0;
	fd2 = lam_rfdup(fd);
	pfd("dup", fd2, errno);
	do_readshow("read 5 via dup", fd2, 5);
	do_readshow("read 5 via fd", fd, 5);
	errno = 0;
	fd3 = lam_rfdup2(fd, 20);
	printf("dup2 -> 20: ret=%s is20=%d errno=%d (%s)\n", fd3 >= 0 ? "ok" : "-1",
	       fd3 == 20, errno, ename(errno));
	do_readshow("read 5 via dup2", 20, 5);
	errno = 0;
	fd3 = lam_rfdup2(fd2, 20);
	printf("dup2 dup -> 20 (open): ret=%s is20=%d errno=%d (%s)\n",
	       fd3 >= 0 ? "ok" : "-1", fd3 == 20, errno, ename(errno));
	do_readshow("read 5 via dup2", 20, 5);
	do_close("close fd", fd);
	do_readshow("read 5 via dup after closing fd", fd2, 5);
	do_close("close dup", fd2);
	do_close("close dup2", 20);
	errno = 0;
	fd2 = lam_rfdup(25);
	pfd("dup never-opened 25", fd2, errno);
	errno = 0;
	fd2 = lam_rfdup2(fd, 21);
	pfd("dup2 closed fd", fd2, errno);
	errno = 0;
	fd = do_open("open b.txt rdonly", path("b.txt"), LAM_O_RDONLY, 0);
	errno = 0;
	fd2 = lam_rfdup2(fd, FUMAX);
	pfd("dup2 -> FUMAX", fd2, errno);
	do_close("close", fd);

	/* 8. getwd, chdir, relative names */
	printf("== 8 getwd/chdir\n");
	memset(cwd0, 0, sizeof(cwd0));
	errno = 0;
	have_cwd0 = lam_rfgetwd(node, cwd0) != NULL;
	printf("getwd: ret=%s errno=%d (%s) absolute=%d\n", have_cwd0 ? "ok" : "NULL",
	       errno, ename(errno), cwd0[0] == '/');
	CALL("chdir missing", lam_rfchdir(node, path("missing.d")));
	CALL("chdir a file", lam_rfchdir(node, path("b.txt")));
	CALL("chdir DIR", lam_rfchdir(node, dir));
	memset(wd, 0, sizeof(wd));
	errno = 0;
	ret = lam_rfgetwd(node, wd) != NULL;
	e = errno;
	if (realpath(dir, real) == NULL)	/* (realpath leaves errno set) */
		strcpy(real, dir);
	printf("getwd: ret=%s errno=%d (%s) equals DIR=%d\n", ret ? "ok" : "NULL",
	       e, ename(e), strcmp(wd, real) == 0);
	fd = do_open("open rel.txt wronly|creat", "rel.txt",
		     LAM_O_WRONLY | LAM_O_CREAT | LAM_O_TRUNC, 0644);
	do_write("write 4", fd, "rel\n", 4);
	do_close("close", fd);
	printf("rel.txt created in DIR: %d\n", stat(path("rel.txt"), &st) == 0);
	if (stat(path("rel.txt"), &st) == 0)
		printf("DIR/rel.txt size=%ld\n", (long) st.st_size);
	do_stat("stat rel.txt (relative)", "rel.txt");
	{
		char nn[64];
		snprintf(nn, sizeof(nn), "%d:rel.txt", node);
		do_stat("stat NODE:rel.txt (relative, prefixed)", nn);
	}
	CALL("access rel.txt R_OK (relative)", lam_rfaccess("rel.txt", R_OK));
	CALL("unlink rel.txt (relative)", lam_rfunlink("rel.txt"));
	printf("rel.txt still in DIR: %d\n", stat(path("rel.txt"), &st) == 0);

	/* 9. system */
	printf("== 9 system\n");
	{
		char cmd[MAXPATHLEN + 64];

		snprintf(cmd, sizeof(cmd), "echo hi > %s/sys.txt; exit 3", dir);
		errno = 0;
		ret = lam_rfsystem(node, cmd);
		printf("system \"echo hi > DIR/sys.txt; exit 3\": ret=%d errno=%d (%s)",
		       ret, errno, ename(errno));
		if (ret != -1 && WIFEXITED(ret))
			printf(" exited=%d", WEXITSTATUS(ret));
		printf("\n");
		f = fopen(path("sys.txt"), "r");
		if (f == NULL) {
			printf("DIR/sys.txt: missing\n");
		} else {
			char line[256];
			memset(line, 0, sizeof(line));
			if (fgets(line, sizeof(line), f) == NULL)
				line[0] = 0;
			line[strcspn(line, "\n")] = 0;
			printf("DIR/sys.txt: \"%s\"\n", line);
			fclose(f);
		}
		errno = 0;
		ret = lam_rfsystem(node, "exit 0");
		pret("system \"exit 0\"", ret, errno);
		errno = 0;
		ret = lam_rfsystem(node, "kill -9 $$");
		printf("system \"kill -9 $$\": ret=%d errno=%d (%s)", ret, errno,
		       ename(errno));
		if (ret != -1 && WIFSIGNALED(ret))
			printf(" signal=%d", WTERMSIG(ret));
		if (ret != -1 && WIFEXITED(ret))
			printf(" exited=%d", WEXITSTATUS(ret));
		printf("\n");
		snprintf(cmd, sizeof(cmd), "pwd > %s/pwd.txt", dir);
		errno = 0;
		ret = lam_rfsystem(node, cmd);
		pret("system \"pwd > DIR/pwd.txt\"", ret, errno);
		f = fopen(path("pwd.txt"), "r");
		if (f == NULL) {
			printf("DIR/pwd.txt: missing\n");
		} else {
			char line[MAXPATHLEN];
			memset(line, 0, sizeof(line));
			if (fgets(line, sizeof(line), f) == NULL)
				line[0] = 0;
			line[strcspn(line, "\n")] = 0;
			printf("system's cwd equals DIR: %d\n", strcmp(line, real) == 0);
			fclose(f);
		}
	}

	/* put the daemon's working directory back */
	if (have_cwd0) {
		CALL("chdir back", lam_rfchdir(node, cwd0));
		memset(wd, 0, sizeof(wd));
		lam_rfgetwd(node, wd);
		printf("getwd equals the first: %d\n", strcmp(wd, cwd0) == 0);
	}

	/* 9b. pathfind (lam_rfpathfind: what mpirun asks for TotalView) */
	printf("== 9b pathfind\n");
	{
		char *r;
		char want[MAXPATHLEN];

		snprintf(want, sizeof(want), "%s/b.txt", dir);
		r = lam_rfpathfind("b.txt", dir, node);
		printf("pathfind b.txt in DIR: found=%d equals DIR/b.txt=%d\n",
		       r != NULL, r != NULL && strcmp(r, want) == 0);
		r = lam_rfpathfind("./b.txt", dir, node);
		printf("pathfind ./b.txt in DIR: found=%d\n", r != NULL);
		r = lam_rfpathfind("sh", NULL, node);
		printf("pathfind sh: found=%d absolute=%d ends in /sh=%d\n", r != NULL,
		       r != NULL && r[0] == '/',
		       r != NULL && strlen(r) >= 3 && strcmp(r + strlen(r) - 3, "/sh") == 0);
		r = lam_rfpathfind("no-such-file.x", dir, node);
		printf("pathfind a missing file: found=%d\n", r != NULL);
	}

	/* 10. misuse */
	printf("== 10 misuse\n");
	fd = do_open("open b.txt rdonly", path("b.txt"), LAM_O_RDONLY, 0);
	do_write("write to rdonly", fd, "x", 1);
	do_close("close", fd);
	fd = do_open("open c.txt wronly|creat", path("c.txt"),
		     LAM_O_WRONLY | LAM_O_CREAT, 0644);
	do_readshow("read from wronly", fd, 5);
	do_write("write 0 bytes", fd, "", 0);
	do_close("close", fd);
	do_readshow("read from closed", fd, 5);
	do_write("write to closed", fd, "x", 1);
	do_close("close again", fd);
	do_readshow("read never-opened 29", 29, 5);
	do_close("close never-opened 29", 29);
	errno = 0;
	n = lam_rflseek(29, 0, SEEK_SET);
	pret("lseek never-opened 29", n, errno);
	do_fstat("fstat never-opened 29", 29);
	CALL("ftruncate never-opened 29", lam_rfftruncate(29, 0));
	do_close("close -1", -1);

	printf("== done\n");
	fflush(stdout);
	kexit(0);
	return 0;
}
