/*
 * dna_identity.h: identities. An identity ("alice") is a name and its ML-DSA-65 key pair (FIPS 204,
 * pure mode, empty context). Keys live in <data_dir>/identities/<name>.key (directory 0700, file
 * 0600, created atomically on first use, never replaced); the format is in docs/PROTOCOL.md.
 * data_dir NULL means $DNA_HOME, else $HOME/.dna.
 *
 * Threads: any function from any thread; one dna_identity_t may be used by several threads at once.
 */
#ifndef DNATRANSPORT_DNA_IDENTITY_H
#define DNATRANSPORT_DNA_IDENTITY_H

#include "dna_common.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DNA_IDENTITY_MAX     255   /* bytes of UTF-8, without the NUL; no NUL inside */
#define DNA_PUBLIC_KEY_SIZE  1952  /* ML-DSA-65 public key */
#define DNA_SIGNATURE_SIZE   3309  /* ML-DSA-65 signature */
#define DNA_FINGERPRINT_SIZE 40    /* "xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx:xxxx" and its NUL */

/* A loaded identity (opaque). */
typedef struct dna_identity_t dna_identity_t;

/** DNA_IDENTITY_MAX, for bindings. Any thread. */
DNA_EXPORT size_t dna_identity_max(void);

/** DNA_PUBLIC_KEY_SIZE, for bindings. Any thread. */
DNA_EXPORT size_t dna_public_key_size(void);

/** DNA_SIGNATURE_SIZE, for bindings. Any thread. */
DNA_EXPORT size_t dna_signature_size(void);

/**
 * Loads the identity's key pair from data_dir; with create != 0, makes and saves a new one when
 * there is none. identity: (in) 1..255 bytes of UTF-8. Returns a handle to free with
 * dna_identity_free(), or NULL with dna_last_error(): DNA_ERR_INVALID_ARGUMENT (bad name),
 * DNA_ERR_NOT_FOUND (no key, create == 0), DNA_ERR_KEY_FILE, DNA_ERR_KEY_PERMISSIONS, DNA_ERR_IO.
 */
DNA_EXPORT dna_identity_t *dna_identity_load(const char *data_dir, const char *identity, int create);

/**
 * Copies the identity's public key (DNA_PUBLIC_KEY_SIZE bytes) to out. *len_out: (out) bytes
 * written, or needed when out_capacity is too small. Returns DNA_OK, DNA_ERR_BUFFER_TOO_SMALL,
 * DNA_ERR_INVALID_ARGUMENT (NULL or unknown handle). Any thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_identity_public_key(const dna_identity_t *identity, uint8_t *out,
    size_t out_capacity, size_t *len_out);

/**
 * Writes the identity's fingerprint (see dna_fingerprint) with its NUL to out (at least
 * DNA_FINGERPRINT_SIZE bytes). Returns DNA_OK, DNA_ERR_BUFFER_TOO_SMALL, DNA_ERR_INVALID_ARGUMENT.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_identity_fingerprint(const dna_identity_t *identity, char *out,
    size_t out_capacity);

/**
 * The fingerprint of any ML-DSA-65 public key: the first 16 bytes of its SHA-256 in lowercase hex,
 * 8 groups of 4 joined by ':'. out: (out) at least DNA_FINGERPRINT_SIZE bytes, NUL-terminated.
 * Returns DNA_OK, DNA_ERR_BUFFER_TOO_SMALL, DNA_ERR_INVALID_ARGUMENT (NULL, wrong key size). Any thread.
 */
DNA_EXPORT DNA_WARN_UNUSED int dna_fingerprint(const uint8_t *public_key, size_t public_key_len, char *out,
    size_t out_capacity);

/** Frees a handle from dna_identity_load (NULL or an already freed handle: nothing). Any thread. */
DNA_EXPORT void dna_identity_free(dna_identity_t *identity);

#ifdef __cplusplus
}
#endif

#endif /* DNATRANSPORT_DNA_IDENTITY_H */
