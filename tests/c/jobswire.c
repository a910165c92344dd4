/*
 * jobswire: what the C compiler and liblam make of the job services' structs
 * (preq.h, freq.h, flatreq.h, lreq.h, trreq.h, kio.h), for
 * tests/test_jobs_wire.py.  No daemon, no kernel.
 *
 *   jobswire layout    SIZE/OFFSET of every struct, CONST of the constants
 *   jobswire dump      HEX of instances filled with distinct values the way
 *                      the clients and servers fill them: Trollius-order
 *                      structs through liblam's ltot(), the others native
 *
 * Every line is "KEY name ..." for the test to parse.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/param.h>

#include <lam_config.h>
#include <flatreq.h>
#include <freq.h>
#include <kio.h>
#include <kreq.h>
#include <ksignal.h>
#include <lreq.h>
#include <net.h>
#include <portable.h>
#include <preq.h>
#include <t_types.h>
#include <terror.h>
#include <trreq.h>

#define SIZE(s) printf("SIZE %s %d\n", #s, (int) sizeof(struct s))
#define OFF(s, f) printf("OFFSET %s %s %d\n", #s, #f, (int) offsetof(struct s, f))
#define KONST(c) printf("CONST %s %ld\n", #c, (long) (c))

static int do_layout(void)
{
	SIZE(jobid_t); OFF(jobid_t, jid_node); OFF(jobid_t, jid_pid);

	SIZE(preq);
	OFF(preq, pq_src_node); OFF(preq, pq_src_event); OFF(preq, pq_req);
	OFF(preq, pq_sel_method); OFF(preq, pq_sel_value); OFF(preq, pq_loadpt);
	OFF(preq, pq_rtf); OFF(preq, pq_status); OFF(preq, pq_signal);
	OFF(preq, pq_maxproc); OFF(preq, pq_argv); OFF(preq, pq_envsize);
	OFF(preq, pq_nodeid); OFF(preq, pq_pid); OFF(preq, pq_jobid);
	OFF(preq, pq_stdin); OFF(preq, pq_stdout); OFF(preq, pq_stderr);
	OFF(preq, pq_world); OFF(preq, pq_parent); OFF(preq, pq_name);
	OFF(preq, pq_wrkdir);
	printf("OFFSET preq pq_rank %d\n", (int) offsetof(struct preq, pq_rank));

	SIZE(preply);
	OFF(preply, pr_reply); OFF(preply, pr_pid); OFF(preply, pr_index);
	OFF(preply, pr_nodeid);

	SIZE(kstatus);
	OFF(kstatus, ks_state); OFF(kstatus, ks_priority); OFF(kstatus, ks_signal);
	OFF(kstatus, ks_event); OFF(kstatus, ks_type); OFF(kstatus, ks_length);
	OFF(kstatus, ks_fyi);

	SIZE(pstate);
	OFF(pstate, ps_reply); OFF(pstate, ps_index); OFF(pstate, ps_pid);
	OFF(pstate, ps_rtf); OFF(pstate, ps_nodeid); OFF(pstate, ps_event);
	OFF(pstate, ps_kernel); OFF(pstate, ps_name); OFF(pstate, ps_loadpt);

	SIZE(freq);
	OFF(freq, fq_req); OFF(freq, fq_src_node); OFF(freq, fq_src_event);
	OFF(freq, fq_param0); OFF(freq, fq_param1); OFF(freq, fq_param2);
	SIZE(freply); OFF(freply, fr_errno); OFF(freply, fr_ret);
	SIZE(fstate);
	OFF(fstate, fs_tfd); OFF(fstate, fs_tflags); OFF(fstate, fs_flow);
	OFF(fstate, fs_count); OFF(fstate, fs_src_node); OFF(fstate, fs_src_event);
	OFF(fstate, fs_name);
	SIZE(fqrename); OFF(fqrename, source); OFF(fqrename, dest);

	SIZE(flreq);
	OFF(flreq, flq_src_node); OFF(flreq, flq_src_event); OFF(flreq, flq_req);
	OFF(flreq, flq_parm1); OFF(flreq, flq_parm2); OFF(flreq, flq_parm3);
	SIZE(flreply); OFF(flreply, flr_reply);

	SIZE(lreq);
	OFF(lreq, lq_req); OFF(lreq, lq_src_node); OFF(lreq, lq_src_event);
	OFF(lreq, lq_dest_node); OFF(lreq, lq_tag);
	SIZE(lreply); OFF(lreply, lr_reply);

	SIZE(trreq);
	OFF(trreq, trq_src_node); OFF(trreq, trq_src_event); OFF(trreq, trq_req);
	OFF(trreq, trq_pid); OFF(trreq, trq_length); OFF(trreq, trq_lnum);
	SIZE(trreply); OFF(trreply, trr_errno); OFF(trreply, trr_length);

	/* the structs overlaid on nh_data must fit in it */
	printf("NHDATA %d\n", (int) sizeof(((struct nmsg *) 0)->nh_data));

	KONST(PQCREATE); KONST(PQDOOM); KONST(PQSTATE); KONST(PQSPAWN);
	KONST(PQDETACH); KONST(PQATTACH); KONST(PQDEATHNOTICE); KONST(PREQS);
	printf("CONST NOTPROCESS %d\n", (int) (int4) NOTPROCESS);
	printf("CONST NOTSTATUS %d\n", (int) (int4) NOTSTATUS);
	 KONST(PSMAXNAME); KONST(PMAX);
	KONST(SELECT_PID); KONST(SELECT_INDEX); KONST(SELECT_MPI); KONST(SELECT_ALL);
	KONST(SELECT_SYS); KONST(SELECT_APPL);
	KONST(_LAM_WIFSIGNALED); KONST(_LAM_WIFNODETACH);
	KONST(RTF_KERNEL); KONST(RTF_KENYA_CHILD); KONST(RTF_KENYA_ATTACH);
	KONST(RTF_SYSGEN); KONST(RTF_WAIT); KONST(RTF_MPIGER); KONST(RTF_DEBUG);
	KONST(RTF_MPIC2C); KONST(RTF_TRACE); KONST(RTF_TRSWITCH); KONST(RTF_TRON);
	KONST(RTF_MPI); KONST(RTF_FLAT); KONST(RTF_MPIRUN); KONST(RTF_HOMOG);
	KONST(RTF_APPWD); KONST(RTF_IO); KONST(RTF_PFDIO); KONST(RTF_TTYOUT);
	KONST(RTF_PTYS); KONST(RTF_CWD); KONST(RTF_MPISIGS); KONST(RTF_FORKED);
	KONST(RTF_TRYCWD); KONST(RTF_IMPI);
	KONST(FQOPEN); KONST(FQCLOSE); KONST(FQREAD); KONST(FQWRITE); KONST(FQLSEEK);
	KONST(FQSTATE); KONST(FQRMFD); KONST(FQINCR); KONST(FQACCESS); KONST(FQMKDIR);
	KONST(FQUNLINK); KONST(FQSYSTEM); KONST(FQCHDIR); KONST(FQRMDIR);
	KONST(FQGETWD); KONST(FQSTAT); KONST(FQFSTAT); KONST(FQDUP); KONST(FQTRUNC);
	KONST(FQFTRUNC); KONST(FQOPENFD); KONST(FQPATHFIND); KONST(FQRENAME);
	KONST(FQF77READ); KONST(FQF77BACK); KONST(FQMAX);
	KONST(LAM_O_RDONLY); KONST(LAM_O_WRONLY); KONST(LAM_O_RDWR);
	KONST(LAM_O_ACCMODE); KONST(LAM_O_APPEND); KONST(LAM_O_CREAT);
	KONST(LAM_O_TRUNC); KONST(LAM_O_EXCL); KONST(LAM_O_LOCK); KONST(LAM_O_REUSE);
	KONST(LAM_O_DRAW); KONST(LAM_O_DINT4); KONST(LAM_O_DFLT4); KONST(LAM_O_DFLT8);
	KONST(LAM_O_1WAY); KONST(LAM_O_ACTIVE); KONST(FUMAX); KONST(NOTFD);
	KONST(MAXPATHLEN);
	KONST(FLPATHLEN); KONST(FLMAX); KONST(FLQLOAD); KONST(FLQGET);
	KONST(FLQFORGET); KONST(FLQDONE); KONST(FLQCLEAN);
	KONST(FNAMELEN); KONST(LQLOAD);
	KONST(TRQSTORE); KONST(TRQGET); KONST(TRQFORGET); KONST(TRQSWEEP);
	KONST(TRQUDIE); KONST(TRQWIPE); KONST(TRQNAMEPUB); KONST(TRQNAMEDEL);
	KONST(TRQNAMEGET); KONST(TRQCLEANOBJS); KONST(TRQMAX); KONST(TRSMAX);
	KONST(TRMAXSPACE); KONST(TRANYLIST); KONST(TRANYPID); KONST(TRNAMELIST);
	KONST(LAM_SIGTRACE); KONST(SIGUDIE); KONST(LAM_PATH_MAX);
	KONST(ENOFLDESCRIPTORS); KONST(ENOPDESCRIPTORS); KONST(EBADTAG);
	KONST(EMPINOINIT); KONST(EPUBLISHED); KONST(ENOTPUBLISHED);
	KONST(ENOPFDSUPPORT); KONST(EEOF); KONST(ENOTPROCESS); KONST(ESERVICE);
	KONST(EBADREQUEST);
	return 0;
}

static void hex(const char *name, const void *p, size_t n)
{
	size_t i;
	printf("HEX %s ", name);
	for (i = 0; i < n; ++i) printf("%02x", ((const unsigned char *) p)[i]);
	printf("\n");
}

/*
 * Field i (0-based, in declaration order) of every int4-only part gets the
 * value 0x0102 * (i + 1) + sign tricks where it matters; the test knows the
 * same rule.  Trollius-order structs are filled through ltot() exactly as
 * rpcreatev()/rpstate()/kenyad fill them.
 */
static int do_dump(void)
{
	struct preq q;
	struct preply r;
	struct pstate s;
	struct freq fq;
	struct freply fr;
	struct fstate fs;
	struct fqrename rn;
	struct flreq flq;
	struct flreply flr;
	struct lreq lq;
	struct lreply lr;
	struct trreq tq;
	struct trreply tr;
	int4 tfds[3], finfo[3];
	int i;

	memset(&q, 0, sizeof(q));
	q.pq_src_node = ltot(LOCAL);
	q.pq_src_event = ltot(-4321);
	q.pq_req = ltot(PQCREATE);
	q.pq_sel_method = ltot(SELECT_PID);
	q.pq_sel_value = ltot(5);
	q.pq_loadpt = ltot(6);
	q.pq_rtf = ltot(RTF_WAIT | RTF_IO | RTF_PFDIO | RTF_PTYS);
	q.pq_status = ltot(8);
	q.pq_signal = ltot(-15);
	q.pq_rank = ltot(10);
	q.pq_argv = ltot(4321);
	q.pq_envsize = ltot(12);
	q.pq_nodeid = ltot(13);
	q.pq_pid = ltot(14);
	q.pq_jobid.jid_node = ltot(15);
	q.pq_jobid.jid_pid = ltot(16);
	q.pq_stdin = ltot(17);
	q.pq_stdout = ltot(18);
	q.pq_stderr = ltot(19);
	q.pq_world = ltot(20);
	q.pq_parent = ltot(21);
	strcpy(q.pq_name, "/usr/bin/prog");
	strcpy(q.pq_wrkdir, "/home/user/work dir");
	hex("preq", &q, sizeof(q));

	memset(&r, 0, sizeof(r));
	r.pr_reply = ltot(ESERVICE); r.pr_pid = ltot(123456);
	r.pr_index = ltot(3); r.pr_nodeid = ltot(-1);
	hex("preply", &r, sizeof(r));

	memset(&s, 0, sizeof(s));
	s.ps_reply = ltot(EEOF); s.ps_index = ltot(2); s.ps_pid = ltot(3);
	s.ps_rtf = ltot(RTF_MPI); s.ps_nodeid = ltot(5); s.ps_event = ltot(-6);
	s.ps_kernel.ks_state = 7; s.ps_kernel.ks_priority = 8;
	s.ps_kernel.ks_signal = 9; s.ps_kernel.ks_event = -10;
	s.ps_kernel.ks_type = 11; s.ps_kernel.ks_length = 12;
	for (i = 0; i < KNFYI; ++i) s.ps_kernel.ks_fyi[i] = 20 + i;
	mltoti4(&s.ps_kernel, sizeof(s.ps_kernel) / sizeof(int4));  /* as kenyad */
	strcpy(s.ps_name, "prog");
	strcpy(s.ps_loadpt, "/usr/bin/prog");
	hex("pstate", &s, sizeof(s));

	memset(&fq, 0, sizeof(fq));
	fq.fq_req = FQOPENFD; fq.fq_src_node = 2; fq.fq_src_event = -3;
	fq.fq_tfd = 4; fq.fq_length = 5; fq.fq_whence = 6;
	hex("freq", &fq, sizeof(fq));
	fr.fr_errno = ESERVICE; fr.fr_ret = -1;
	hex("freply", &fr, sizeof(fr));

	memset(&fs, 0, sizeof(fs));
	fs.fs_tfd = ltot(1); fs.fs_tflags = ltot(LAM_O_WRONLY | LAM_O_1WAY);
	fs.fs_flow = ltot(3); fs.fs_count = ltot(4); fs.fs_src_node = ltot(5);
	fs.fs_src_event = ltot(-6);
	strcpy(fs.fs_name, "stdout.4321");
	hex("fstate", &fs, sizeof(fs));

	memset(&rn, 0, sizeof(rn));
	strcpy(rn.source, "/tmp/from");
	strcpy(rn.dest, "/tmp/to");
	hex("fqrename", &rn, sizeof(rn));

	tfds[0] = 3; tfds[1] = 4; tfds[2] = -5;
	hex("tfds[3]", tfds, sizeof(tfds));

	memset(&flq, 0, sizeof(flq));
	flq.flq_src_node = LOCAL; flq.flq_src_event = -2; flq.flq_req = FLQLOAD;
	flq.flq_tag = 4; flq.flq_malength = 5; flq.flq_ldlength = 6;
	hex("flreq", &flq, sizeof(flq));
	flr.flr_reply = EBADTAG;
	hex("flreply", &flr, sizeof(flr));

	memset(&lq, 0, sizeof(lq));
	lq.lq_req = LQLOAD; lq.lq_src_node = 2; lq.lq_src_event = -3;
	lq.lq_dest_node = 4; lq.lq_tag = 5;
	hex("lreq", &lq, sizeof(lq));
	lr.lr_reply = 7;
	hex("lreply", &lr, sizeof(lr));

	memset(&tq, 0, sizeof(tq));
	tq.trq_src_node = 1; tq.trq_src_event = -2; tq.trq_req = TRQFORGET;
	tq.trq_pid = TRANYPID; tq.trq_length = 5; tq.trq_lnum = TRNAMELIST;
	hex("trreq", &tq, sizeof(tq));
	tr.trr_errno = ENOTPUBLISHED; tr.trr_length = 8;
	hex("trreply", &tr, sizeof(tr));

	finfo[0] = 1; finfo[1] = 7; finfo[2] = 1;
	hex("finfo[3]", finfo, sizeof(finfo));
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "layout")) return do_layout();
	if (argc == 2 && !strcmp(argv[1], "dump")) return do_dump();
	fprintf(stderr, "usage: jobswire layout|dump\n");
	return 64;
}
