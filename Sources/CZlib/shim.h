#ifndef PLAYBACK_CZLIB_SHIM_H
#define PLAYBACK_CZLIB_SHIM_H
#include <zlib.h>

/* deflateInit2/inflateInit2 are macros; Swift sees these functions instead. */
static inline int playback_deflate_init(z_streamp stream, int level, int window_bits, int mem_level) {
    return deflateInit2(stream, level, Z_DEFLATED, window_bits, mem_level, Z_DEFAULT_STRATEGY);
}

static inline int playback_inflate_init(z_streamp stream, int window_bits) {
    return inflateInit2(stream, window_bits);
}
#endif
