/* table_test.h - Criterion ParameterizedTest over a static const table.
 *
 * Criterion runs each test in a fresh process of the (position-independent)
 * test binary, so a parameter copied by value must not hold pointers into
 * static data: they would point elsewhere in the child. We pass the case's
 * index instead and look it up in the child. */
#ifndef RINGMAIL_TESTS_TABLE_TEST_H
#define RINGMAIL_TESTS_TABLE_TEST_H

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#define TABLE_LEN(t) (sizeof(t) / sizeof((t)[0]))

/* Defines Suite::Name running fn(&table[i]) for every entry of table. */
#define TABLE_TEST(Suite, Name, table, fn)                                   \
	ParameterizedTestParameters(Suite, Name)                             \
	{                                                                    \
		static size_t idx_[TABLE_LEN(table)];                        \
		for (size_t i_ = 0; i_ < TABLE_LEN(table); i_++)             \
			idx_[i_] = i_;                                       \
		return cr_make_param_array(size_t, idx_, TABLE_LEN(table));  \
	}                                                                    \
	ParameterizedTest(size_t *i, Suite, Name)                            \
	{                                                                    \
		cr_log_info("case %zu", *i);                                 \
		fn(&(table)[*i]);                                            \
	}

#endif
