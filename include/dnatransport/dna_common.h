/*
 * dna_common.h: versions, error codes, buffers and logging shared by every part of libdnatransport.
 *
 * Threads: every function here may be called from any thread. The log handler runs on the thread
 * that logs (a context's I/O thread, or the caller's thread for functions without a context).
 *
 * Errors: functions that can fail return int: DNA_OK (0) on success, a negative DNA_ERR_* code on
 * failure; non-negative results other than 0 are values (a port, a count). Codes are never
 * renumbered or reused. Constructors return NULL on failure and leave the code in dna_last_error().
 */
#ifndef DNATRANSPORT_DNA_COMMON_H
#define DNATRANSPORT_DNA_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define DNA_EXPORT __attribute__((visibility("default")))
#define DNA_WARN_UNUSED __attribute__((warn_unused_result))
#else
#define DNA_EXPORT
#define DNA_WARN_UNUSED
#endif

/* Version of this header; dna_version_number() gives the library's. */
#define DNA_VERSION_MAJOR 1
#define DNA_VERSION_MINOR 0
#define DNA_VERSION_PATCH 0
#define DNA_VERSION_STRING "1.0.0"
#define DNA_VERSION_NUMBER 10000 /* major*10000 + minor*100 + patch */

/* Result codes. */
#define DNA_OK                     0
#define DNA_ERR_INVALID_ARGUMENT  (-1)  /* NULL pointer, bad string, bad value, unknown id */
#define DNA_ERR_NOT_FOUND         (-2)  /* nothing stored under that name */
#define DNA_ERR_TIMEOUT           (-3)  /* the wait ended before anything arrived */
#define DNA_ERR_IO                (-4)  /* a system call failed (socket, file) */
#define DNA_ERR_PROTOCOL          (-5)  /* the peer broke the protocol */
#define DNA_ERR_CHECKSUM          (-6)  /* frame checksum mismatch */
#define DNA_ERR_BAD_SIGNATURE     (-7)  /* a signature does not verify */
#define DNA_ERR_BUFFER_TOO_SMALL  (-8)  /* the output buffer is too small; the needed size is reported */
#define DNA_ERR_CLOSED            (-9)  /* the connection or context is closed */
#define DNA_ERR_UNREACHABLE       (-10) /* no path to the peer */
#define DNA_ERR_PEER_OFFLINE      (-11) /* the peer is not online */
#define DNA_ERR_TOO_LARGE         (-12) /* a payload above the configured maximum */
#define DNA_ERR_NO_MEMORY         (-13) /* an allocation failed */
#define DNA_ERR_TRUNCATED         (-14) /* fewer bytes than a frame header */
#define DNA_ERR_BAD_MAGIC         (-15) /* a frame that does not start with "DNA " */
#define DNA_ERR_BAD_VERSION       (-16) /* a frame version this library does not speak */
#define DNA_ERR_UNKNOWN_TYPE      (-17) /* a message type this library does not know */
#define DNA_ERR_LENGTH_MISMATCH   (-18) /* declared payload length differs from the bytes present */
#define DNA_ERR_INTERNAL          (-19) /* a bug in the library; please report it */
#define DNA_ERR_KEY_FILE          (-20) /* an identity key file is corrupt, truncated or another's */
#define DNA_ERR_KEY_PERMISSIONS   (-21) /* a key file or its directory is readable by others, or not a plain file */
#define DNA_ERR_BAD_ENTRY         (-22) /* a peer entry with a malformed field (see dht_peer_entry_verify) */
#define DNA_ERR_REPLAYED          (-23) /* a message or frame that was already received */
#define DNA_ERR_AUTHENTICATION    (-24) /* a sealed message does not authenticate: modified, forged or another key's */
#define DNA_ERR_MISDIRECTED       (-25) /* a handshake meant for another identity's key */
#define DNA_ERR_NAME_TAKEN        (-26) /* the identity's name is held in the DHT by another key (first come,
                                           first served: PROTOCOL.md §5.2); its entry was stored nowhere */
#define DNA_ERR_CLOCK_SKEW        (-27) /* holders refused an entry for its time (this clock is off theirs by
                                           more than they accept, and their times could not correct it) */
#define DNA_ERR_REFUSED           (-28) /* the peer completed the handshake, then refused the connection: it
                                           found no entry of this identity in the DHT (announce stored
                                           nowhere), or one with another key (PROTOCOL.md §7.5); or the
                                           DHT's holders answered a value put and none stored it (over
                                           the writer's quota, busy, invalid to them: §10.4) */
#define DNA_ERR_SUPERSEDED        (-29) /* the DHT's holders keep a newer value of this writer's slot (PROTOCOL.md
                                           §10.1): another process of the identity wrote it */

/* Log levels, from most to least verbose. */
#define DNA_LOG_TRACE    0
#define DNA_LOG_DEBUG    1
#define DNA_LOG_INFO     2
#define DNA_LOG_NOTICE   3
#define DNA_LOG_WARNING  4
#define DNA_LOG_ERROR    5
#define DNA_LOG_CRITICAL 6

/**
 * A static, human-readable description of a DNA_OK or DNA_ERR_* code ("unknown error" for others).
 * The string is never freed. Any thread.
 */
DNA_EXPORT const char *dna_strerror(int code);

/**
 * The code of the last call that failed on this thread (DNA_OK if none has). Constructors that
 * return NULL leave their reason here. Success does not reset it. Any thread (thread-local).
 */
DNA_EXPORT int dna_last_error(void);

/** The library's version, "major.minor.patch" (static, never freed). Any thread. */
DNA_EXPORT const char *dna_version_string(void);

/** The library's version as major*10000 + minor*100 + patch, to compare with DNA_VERSION_NUMBER. */
DNA_EXPORT int dna_version_number(void);

/**
 * Frees a buffer that the library returned (e.g. transport_receive's ciphertext).
 * buffer: (in, owned) the library's pointer, or NULL (does nothing). Any thread.
 */
DNA_EXPORT void dna_buffer_free(void *buffer);

/**
 * Receives one log message: level is DNA_LOG_*, message is valid only during the call.
 * user_data is the pointer given to dna_set_log_handler.
 */
typedef void (*dna_log_fn)(int level, const char *message, void *user_data);

/**
 * Routes the library's log messages of level >= min_level to fn (process-wide; one handler).
 * fn: NULL unregisters; no message is logged without a handler. min_level is clamped to
 * DNA_LOG_TRACE..DNA_LOG_CRITICAL. When this returns, no call of the previous handler is running
 * or will start. fn must not call dna_set_log_handler itself. Any thread.
 */
DNA_EXPORT void dna_set_log_handler(dna_log_fn fn, int min_level, void *user_data);

#ifdef __cplusplus
}
#endif

#endif /* DNATRANSPORT_DNA_COMMON_H */
