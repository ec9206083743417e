/* sasl.c - strict base64 and SASL PLAIN (see sasl.h). */
#include "proto/sasl.h"

#include <errno.h>

/* Returns the 6-bit value of a base64 character, or -1. */
static int b64_value(uint8_t c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

int sasl_base64_decode(struct span in, uint8_t *out, size_t cap, size_t *len_r)
{
	size_t n = 0;

	*len_r = 0;
	if (in.len % 4 != 0)
		return -EINVAL;
	for (size_t i = 0; i < in.len; i += 4) {
		const uint8_t *q = in.p + i;
		int last = i + 4 == in.len;
		int v[4];
		size_t pad = 0;

		/* '=' may only appear as the final one or two characters. */
		if (last && q[3] == '=') {
			pad = q[2] == '=' ? 2 : 1;
		}
		for (size_t k = 0; k < 4 - pad; k++) {
			v[k] = b64_value(q[k]);
			if (v[k] < 0)
				return -EINVAL;
		}
		uint32_t w = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12;
		if (pad < 2)
			w |= (uint32_t)v[2] << 6;
		if (pad < 1)
			w |= (uint32_t)v[3];
		/* Non-canonical: the bits dropped by the padding must be 0,
		 * otherwise two encodings decode to the same octets. */
		if ((pad == 2 && (w & 0xffff)) || (pad == 1 && (w & 0xff)))
			return -EINVAL;
		size_t produce = 3 - pad;
		if (cap - n < produce)
			return -ENOSPC;
		out[n++] = (uint8_t)(w >> 16);
		if (produce > 1)
			out[n++] = (uint8_t)(w >> 8);
		if (produce > 2)
			out[n++] = (uint8_t)w;
	}
	*len_r = n;
	return 0;
}

int sasl_base64_encode(struct span in, uint8_t *out, size_t cap, size_t *len_r)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t need = SASL_BASE64_ENCODED_LEN(in.len);
	size_t n = 0;

	*len_r = 0;
	if (in.len > (SIZE_MAX / 4) * 3 - 2 || cap < need)
		return -ENOSPC;
	for (size_t i = 0; i < in.len; i += 3) {
		size_t left = in.len - i;
		uint32_t w = (uint32_t)in.p[i] << 16;
		if (left > 1)
			w |= (uint32_t)in.p[i + 1] << 8;
		if (left > 2)
			w |= in.p[i + 2];
		out[n++] = (uint8_t)alphabet[w >> 18 & 63];
		out[n++] = (uint8_t)alphabet[w >> 12 & 63];
		out[n++] = left > 1 ? (uint8_t)alphabet[w >> 6 & 63] : '=';
		out[n++] = left > 2 ? (uint8_t)alphabet[w & 63] : '=';
	}
	*len_r = n;
	return 0;
}

int sasl_plain_split(struct span decoded, struct span *authzid_r,
		     struct span *authcid_r, struct span *passwd_r)
{
	size_t nul[2];
	size_t nnul = 0;

	*authzid_r = *authcid_r = *passwd_r = (struct span){ NULL, 0 };
	for (size_t i = 0; i < decoded.len; i++) {
		uint8_t c = decoded.p[i];
		if (c == '\r' || c == '\n')
			return -EINVAL;
		if (c == '\0') {
			if (nnul == 2)
				return -EINVAL;
			nul[nnul++] = i;
		}
	}
	if (nnul != 2)
		return -EINVAL;
	struct span authzid = { decoded.p, nul[0] };
	struct span authcid = { decoded.p + nul[0] + 1, nul[1] - nul[0] - 1 };
	struct span passwd = { decoded.p + nul[1] + 1, decoded.len - nul[1] - 1 };
	if (authcid.len == 0 || passwd.len == 0)
		return -EINVAL;
	if (authzid.len > SASL_PLAIN_ID_MAX || authcid.len > SASL_PLAIN_ID_MAX ||
	    passwd.len > SASL_PLAIN_PASSWD_MAX)
		return -E2BIG;
	*authzid_r = authzid;
	*authcid_r = authcid;
	*passwd_r = passwd;
	return 0;
}
