/* libFuzzer target for proto/smtp_parse.c and proto/sasl.c.
 *
 * Input: byte 0 = options (bit 0: bare policy; bits 1-3: output array size
 * for the split run), bytes 1-2 = split offset, the rest = the stream.
 *
 * 1. The stream as SMTP commands: every line parsed and its arguments fed
 *    to the path, parameter, xtext, AUTH/base64/PLAIN and BDAT parsers, with
 *    the session's resync after TOO_LONG.
 * 2. The stream as DATA: the scanner run unsplit, split at the chosen
 *    offset, and byte by byte (short inputs), each piece in its own
 *    exact-size buffer freed after use. Asserted: END happens exactly after
 *    the first CRLF.CRLF of CRLF+stream (so the consumed input ends with
 *    "\r\n.\r\n" or is ".\r\n"); every run gives the same END, output and
 *    state; at END the output equals a naive reference of the rules.
 * 3. The stream as raw xtext, base64 (with re-encoding) and PLAIN. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/sasl.h"
#include "proto/smtp_parse.h"

#define CHECK(x)                                                              \
	do {                                                                  \
		if (!(x))                                                     \
			__builtin_trap();                                     \
	} while (0)

static void fuzz_args(const struct smtp_cmd *cmd)
{
	struct smtp_path path;
	struct smtp_param params[8];
	size_t np;
	uint8_t buf[SMTP_AUTH_LINE_MAX];
	size_t len;

	switch (cmd->verb) {
	case SMTP_CMD_MAIL:
	case SMTP_CMD_RCPT:
		if (smtp_parse_path(cmd->args, cmd->verb, &path, params, 8, &np) !=
		    SMTP_PARSE_OK) {
			CHECK(path.reason != SMTP_PATH_OK);
			break;
		}
		CHECK(path.reason == SMTP_PATH_OK && np <= 8);
		CHECK(path.local.len <= SMTP_LOCAL_PART_MAX);
		CHECK(path.domain.len <= SMTP_DOMAIN_MAX);
		CHECK(path.path.len + 2 <= SMTP_PATH_MAX);
		CHECK(path.path.p >= cmd->args.p &&
		      path.path.p + path.path.len <= cmd->args.p + cmd->args.len);
		for (size_t i = 0; i < path.path.len; i++)
			CHECK(path.path.p[i] >= 0x20 && path.path.p[i] != 0x7f);
		for (size_t i = 0; i < np; i++) {
			const struct smtp_param *p = &params[i];
			uint64_t size;
			enum smtp_body body;
			enum smtp_ret ret;
			unsigned notify;
			struct span t, a;
			switch (smtp_param_kind(p->keyword)) {
			case SMTP_PARAM_SIZE:
				smtp_param_size(p, &size);
				break;
			case SMTP_PARAM_BODY:
				smtp_param_body(p, &body);
				break;
			case SMTP_PARAM_SMTPUTF8:
				smtp_param_smtputf8(p);
				break;
			case SMTP_PARAM_RET:
				smtp_param_ret(p, &ret);
				break;
			case SMTP_PARAM_ENVID:
				if (smtp_param_envid(p) == SMTP_PARSE_OK) {
					CHECK(smtp_xtext_decode(p->value, buf, sizeof(buf),
								&len) == SMTP_PARSE_OK);
					CHECK(len <= p->value.len);
				}
				break;
			case SMTP_PARAM_NOTIFY:
				if (smtp_param_notify(p, &notify) == SMTP_PARSE_OK)
					CHECK(notify != 0 && notify < 16);
				break;
			case SMTP_PARAM_ORCPT:
				if (smtp_param_orcpt(p, &t, &a) == SMTP_PARSE_OK)
					CHECK(smtp_xtext_decode(a, buf, sizeof(buf), &len) ==
					      SMTP_PARSE_OK);
				break;
			case SMTP_PARAM_AUTH:
				smtp_param_auth(p);
				break;
			case SMTP_PARAM_UNKNOWN:
				break;
			}
		}
		break;
	case SMTP_CMD_AUTH: {
		struct span mech, ir, z, u, pw;
		int has;
		if (smtp_parse_auth(cmd->args, &mech, &ir, &has) != SMTP_PARSE_OK)
			break;
		CHECK(mech.len >= 1 && mech.len <= SMTP_AUTH_MECH_MAX);
		if (sasl_base64_decode(ir, buf, sizeof(buf), &len) == 0) {
			CHECK(len <= SASL_BASE64_DECODED_MAX(ir.len));
			sasl_plain_split(span_make(buf, len), &z, &u, &pw);
		}
		break;
	}
	case SMTP_CMD_BDAT: {
		uint64_t size;
		int last;
		smtp_parse_bdat(cmd->args, &size, &last);
		break;
	}
	default:
		break;
	}
}

static void fuzz_commands(const uint8_t *data, size_t size)
{
	struct span in = span_make(data, size);
	int skipping = 0;

	while (in.len > 0) {
		struct smtp_cmd cmd;
		size_t consumed;
		enum smtp_parse_result r;

		if (skipping) {
			r = smtp_skip_line(in, &consumed);
			CHECK(consumed > 0 && consumed <= in.len);
			skipping = r == SMTP_PARSE_AGAIN;
			in = span_skip(in, consumed);
			continue;
		}
		r = smtp_parse_command(in, &cmd, &consumed);
		if (r == SMTP_PARSE_TOO_LONG && cmd.verb == SMTP_CMD_AUTH)
			r = smtp_parse_command_max(in, SMTP_AUTH_LINE_MAX, &cmd, &consumed);
		if (r == SMTP_PARSE_AGAIN) {
			CHECK(consumed == 0 && in.len < SMTP_AUTH_LINE_MAX);
			break;
		}
		CHECK(consumed > 0 && consumed <= in.len);
		if (r == SMTP_PARSE_OK) {
			CHECK(in.p[consumed - 1] == '\n');
			CHECK(cmd.line.text.len + 1 + !cmd.line.bare_lf == consumed);
			CHECK(memchr(cmd.line.text.p, '\r', cmd.line.text.len) == NULL);
			CHECK(memchr(cmd.line.text.p, '\0', cmd.line.text.len) == NULL);
			fuzz_args(&cmd);
		} else if (r == SMTP_PARSE_TOO_LONG) {
			skipping = cmd.line.partial;
		} else {
			CHECK(r == SMTP_PARSE_INVALID && in.p[consumed - 1] == '\n');
		}
		in = span_skip(in, consumed);
	}
}

struct run {
	enum smtp_data_result r;
	size_t end;
	uint8_t *out;
	size_t outlen;
	struct smtp_data_state st;
};

/* Feeds data cut after every cut[] offset, with max_out output spans. */
static void data_run(const uint8_t *data, size_t size, uint8_t policy,
		     const size_t *cuts, size_t ncuts, size_t max_out, struct run *res)
{
	struct span out[64];
	size_t start = 0;

	memset(res, 0, sizeof(*res));
	res->st.bare_policy = policy;
	res->r = SMTP_DATA_MORE;
	res->out = malloc(2 * size + 1);
	for (size_t c = 0; c <= ncuts && res->r != SMTP_DATA_END; c++) {
		size_t stop = c < ncuts ? cuts[c] : size;
		size_t plen = stop - start;
		uint8_t *piece = malloc(plen ? plen : 1);
		size_t off = 0;
		if (plen)
			memcpy(piece, data + start, plen);
		for (;;) {
			size_t nout, consumed;
			enum smtp_data_result r = smtp_data_feed(
				&res->st, span_make(piece + off, plen - off), out,
				max_out, &nout, &consumed);
			CHECK(nout <= max_out && off + consumed <= plen);
			for (size_t k = 0; k < nout; k++) {
				CHECK(out[k].len > 0);
				memcpy(res->out + res->outlen, out[k].p, out[k].len);
				res->outlen += out[k].len;
			}
			CHECK(res->outlen <= 2 * size);
			off += consumed;
			if (r == SMTP_DATA_END) {
				res->r = r;
				res->end = start + off;
				break;
			}
			if (r == SMTP_DATA_MORE) {
				CHECK(off == plen);
				break;
			}
			CHECK(r == SMTP_DATA_OUT_FULL && (consumed > 0 || nout > 0 ||
							  off < plen));
		}
		free(piece);
		start = stop;
	}
	CHECK(res->st.size == res->outlen);
}

static void same(const struct run *a, const struct run *b)
{
	CHECK(a->r == b->r && a->end == b->end && a->outlen == b->outlen);
	CHECK(a->outlen == 0 || memcmp(a->out, b->out, a->outlen) == 0);
	CHECK(a->st.bare_seen == b->st.bare_seen);
	CHECK(a->st.long_line == b->st.long_line);
	CHECK(a->st.headers_done == b->st.headers_done);
	CHECK(a->st.received == b->st.received);
	CHECK(a->st.longest_line == b->st.longest_line);
	CHECK(a->st.header_size == b->st.header_size);
}

/* The rules of smtp_data_feed() written the obvious way over the whole
 * message content in[0..e) (everything before the final ".\r\n"). */
static size_t reference(const uint8_t *in, size_t e, int normalize, uint8_t *out)
{
	size_t n = 0;

	for (size_t i = 0; i < e; i++) {
		uint8_t c = in[i];
		int line_start = i == 0 || in[i - 1] == '\n' ||
				 (in[i - 1] == '\r' && c != '\n');
		if (line_start && c == '.' && in[i + 1] != '\r' && in[i + 1] != '\n')
			continue;
		int bare_lf = c == '\n' && (i == 0 || in[i - 1] != '\r');
		int bare_cr = c == '\r' && in[i + 1] != '\n';
		if (normalize && (bare_lf || bare_cr)) {
			out[n++] = '\r';
			out[n++] = '\n';
		} else {
			out[n++] = c;
		}
	}
	return n;
}

static void fuzz_data(const uint8_t *data, size_t size, uint8_t opts, size_t split)
{
	uint8_t policy = opts & 1;
	size_t max_out = SMTP_DATA_OUT_MIN + ((opts >> 1) & 7) * 8;
	struct run whole, other;

	data_run(data, size, policy, NULL, 0, 64, &whole);

	/* The end is exactly after the first CRLF.CRLF of CRLF+data. */
	size_t want = 0;
	if (size >= 3 && memcmp(data, ".\r\n", 3) == 0)
		want = 3;
	for (size_t i = 0; want == 0 && i + 5 <= size; i++)
		if (memcmp(data + i, "\r\n.\r\n", 5) == 0)
			want = i + 5;
	CHECK(whole.end == want);
	CHECK((whole.r == SMTP_DATA_END) == (want != 0));
	if (whole.r == SMTP_DATA_END) {
		uint8_t *ref = malloc(2 * size + 1);
		size_t rlen = reference(data, whole.end - 3, policy, ref);
		CHECK(rlen == whole.outlen);
		CHECK(rlen == 0 || memcmp(ref, whole.out, rlen) == 0);
		free(ref);
	}

	size_t cut = size ? split % (size + 1) : 0;
	data_run(data, size, policy, &cut, 1, max_out, &other);
	same(&whole, &other);
	free(other.out);

	if (size <= 256) {
		size_t cuts[256];
		for (size_t i = 0; i + 1 < size; i++)
			cuts[i] = i + 1;
		data_run(data, size, policy, cuts, size ? size - 1 : 0, max_out, &other);
		same(&whole, &other);
		free(other.out);
	}
	free(whole.out);
}

static void fuzz_raw(const uint8_t *data, size_t size)
{
	uint8_t *buf = malloc(size + 1);
	uint8_t *enc = malloc(SASL_BASE64_ENCODED_LEN(size) + 4);
	size_t len, elen;
	struct span z, u, p;

	if (smtp_xtext_decode(span_make(data, size), buf, size, &len) == SMTP_PARSE_OK) {
		CHECK(len <= size);
		for (size_t i = 0; i < len; i++)
			CHECK(buf[i] >= 0x20 && buf[i] <= 0x7e);
	}
	if (sasl_base64_decode(span_make(data, size), buf, size, &len) == 0) {
		/* strict decoding is canonical: re-encoding gives the input */
		CHECK(sasl_base64_encode(span_make(buf, len), enc,
					 SASL_BASE64_ENCODED_LEN(size) + 4, &elen) == 0);
		CHECK(elen == size && (size == 0 || memcmp(enc, data, size) == 0));
	}
	if (sasl_plain_split(span_make(data, size), &z, &u, &p) == 0) {
		CHECK(u.len > 0 && p.len > 0);
		CHECK(z.len + u.len + p.len + 2 == size);
	}
	free(buf);
	free(enc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	uint8_t opts = data[0];
	size_t split = (size_t)data[1] << 8 | data[2];
	data += 3;
	size -= 3;

	fuzz_commands(data, size);
	fuzz_data(data, size, opts, split);
	fuzz_raw(data, size);
	return 0;
}
