// The parts of hiredis RedisClient uses: the RESP reader and the command formatter.
// Included by path: Debian's hiredis.pc adds -D_FILE_OFFSET_BITS=64, a flag SwiftPM refuses with a warning.
#ifndef PLAYBACK_SYNC_CHIREDIS_SHIM_H
#define PLAYBACK_SYNC_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#endif
