/* fuzz_config - the configuration parser on arbitrary bytes.
 *
 * Invariants: config_parse_text never crashes or overruns; an error always
 * comes as "FILE:LINE: message" with LINE within the input's line count;
 * a configuration that parses and validates prints (config_print) into
 * text that parses again to the same listeners and limits. */
#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct config a, b;
	char err[512];
	size_t lines = 1;

	for (size_t i = 0; i < size; i++)
		lines += data[i] == '\n';
	config_defaults(&a);
	int rc = config_parse_text(&a, "f", (const char *)data, size, err, sizeof(err));
	if (rc) {
		unsigned long line;
		assert(strncmp(err, "f:", 2) == 0);
		line = strtoul(err + 2, NULL, 10);
		assert(line >= 1 && line <= lines);
		return 0;
	}
	if (config_validate(&a, err, sizeof(err)))
		return 0;

	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);
	assert(f);
	config_print(&a, f);
	fclose(f);
	config_defaults(&b);
	rc = config_parse_text(&b, "printed", text, len, err, sizeof(err));
	assert(rc == 0);
	assert(b.nlisteners == a.nlisteners);
	for (size_t i = 0; i < a.nlisteners; i++) {
		assert(b.listeners[i].port == a.listeners[i].port);
		assert(b.listeners[i].proto == a.listeners[i].proto);
		assert(b.listeners[i].security == a.listeners[i].security);
	}
	assert(b.max_connections == a.max_connections);
	assert(b.message_size_max == a.message_size_max);
	free(text);
	return 0;
}
