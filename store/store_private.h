/* store_private.h - internals shared by store.c and store_fsck.c: the
 * directory layout. Everything else of the backend stays in store.c. */
#ifndef RINGMAIL_STORE_STORE_PRIVATE_H
#define RINGMAIL_STORE_STORE_PRIVATE_H

#include <stddef.h>
#include <stdint.h>

#include "store/record.h"

/* DATA/mail/<user>/folders.log             the user's folder list
 * DATA/mail/<user>/f<id>/log               the folder's index log
 * DATA/mail/<user>/f<id>/checkpoint        its latest snapshot
 * DATA/mail/<user>/f<id>/log.new           a rewrite of the log, until renamed
 * DATA/mail/<user>/f<id>/s<n>              a shared segment
 * DATA/mail/<user>/f<id>/m<n>              a one-message segment
 * Segment numbers share one space per folder; a record's seg field has
 * SEG_SINGLE set for an m<n> file. */
#define STORE_MAIL_DIR "mail"
#define STORE_FOLDERS_LOG "folders.log"
#define STORE_LOG "log"
#define STORE_CHECKPOINT "checkpoint"
#define STORE_CHECKPOINT_TMP "checkpoint.tmp"
#define STORE_LOG_NEW "log.new"
#define SEG_SINGLE RECORD_SEG_SINGLE
#define SEG_NUM(s) RECORD_SEG_NUM(s)
/* INBOX is folder 0 and exists without a record. */
#define STORE_INBOX_ID 0u

/* Writes the directory name of user into out (cap bytes): bytes other than
 * [a-z0-9@._+-] become %XX, as does a leading '.'. Returns the length, or
 * -EINVAL for an empty or too long name. */
int store_user_dirname(const char *user, char *out, size_t cap);
/* Writes the file name of segment seg ("s12" or "m13"). */
void store_seg_name(uint32_t seg, char out[16]);

#endif
