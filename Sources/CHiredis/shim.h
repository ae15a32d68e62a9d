// The parts of hiredis RedisClient uses: the RESP reader and the command formatter.
// Included by path: Debian's hiredis.pc adds -D_FILE_OFFSET_BITS=64, a flag SwiftPM refuses with a warning.
#ifndef PLAYBACK_SYNC_CHIREDIS_SHIM_H
#define PLAYBACK_SYNC_CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <stdlib.h>

// The most elements one array of a reply may announce. hiredis 0.14 allocates an array's slots
// when it reads the array's header, so "*999999999" from a broken or hostile server would be an
// 8 GB allocation before a single element arrived; past this bound the reply is refused (the
// reader reports "Out of memory" and the connection is dropped). The daemon's largest replies
// hold a few thousand elements.
#define PLAYBACK_MAX_REPLY_ELEMENTS (1 << 20)

// hiredis's own createArray (reached through the reader's privdata, which it hands every task),
// refusing arrays past the bound.
static inline void *playback_create_array(const redisReadTask *task, int elements) {
    const redisReplyObjectFunctions *original = (const redisReplyObjectFunctions *)task->privdata;
    if (original == NULL || elements < 0 || elements > PLAYBACK_MAX_REPLY_ELEMENTS) return NULL;
    return original->createArray(task, elements);
}

// A reader with hiredis's reply objects whose arrays are bounded; NULL when out of memory.
// Free it with playback_reader_free.
static inline redisReader *playback_reader_create(void) {
    redisReader *reader = redisReaderCreate();
    if (reader == NULL) return NULL;
    redisReplyObjectFunctions *bounded = (redisReplyObjectFunctions *)malloc(sizeof *bounded);
    if (bounded == NULL) {
        redisReaderFree(reader);
        return NULL;
    }
    *bounded = *reader->fn;
    bounded->createArray = playback_create_array;
    reader->privdata = reader->fn;
    reader->fn = bounded;
    return reader;
}

static inline void playback_reader_free(redisReader *reader) {
    redisReplyObjectFunctions *bounded = reader->fn;
    redisReaderFree(reader);
    free(bounded);
}

#endif
