/*
 * fileio.h - reading a whole small file (a password file, an ACL file) into
 * memory, with a bound, for the parsers that take text and a length.
 */
#ifndef STARLING_FILEIO_H
#define STARLING_FILEIO_H

#include <stddef.h>

/*
 * Read the file at path into a new buffer (*text, *len; the caller frees it,
 * and may wipe it first). Returns 0; -errno when the file cannot be opened
 * (nothing is returned then); -EFBIG when it holds more than `max` bytes,
 * -ENOMEM, or -EIO on a read error: then *text holds what was read so far
 * (*len bytes), for the caller to wipe and free.
 */
int file_read_all(const char *path, size_t max, char **text, size_t *len);

#endif
