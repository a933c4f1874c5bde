/*
 * A sanitizer fuzz run of the native relay's framing (plugins/jitvault_postgres/_framing.h),
 * compiled with -fsanitize=address,undefined by tests/unit/test_pg_native_fuzz.py.
 *
 * usage: fuzz_framing SEED ITERATIONS
 *
 * Each iteration builds a stream from valid messages, mutated ones and random bytes, cuts it at
 * random points and feeds it to both framers, checking what a relay relies on: what is returned
 * for forwarding is exactly the next bytes of the stream, never more than was fed; every
 * surfaced statement lies inside its message; after a violation nothing more is returned. The
 * sanitizers catch every out-of-bounds access, use after free, leak and undefined behaviour.
 */
#include <stdio.h>

#include "_framing.h"

static uint64_t rng_state;

static uint64_t next_random(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t below(size_t n) { return n ? (size_t)(next_random() % n) : 0; }

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* one message: a type, a length (right or not), a body (well-formed or not) */
static size_t make_message(uint8_t *out, size_t room) {
    static const char types[] = "QPBEDCSHFdcfXZ\0p";
    if (room < 64) return 0;
    size_t body = below(room - 16 < 4000 ? room - 16 : 4000);
    if (below(4) == 0) body = below(40);
    uint8_t type = (uint8_t)types[below(sizeof types - 1)];
    out[0] = type;
    for (size_t i = 0; i < body; i++) out[5 + i] = (uint8_t)(below(3) == 0 ? 0 : 'a' + below(26));
    if (type == 'Q' && body && below(2)) out[5 + body - 1] = 0;
    if (type == 'P' && body >= 4 && below(2)) {
        out[5] = 's';
        out[6] = 0;
        out[5 + body - 3] = 0;
        out[5 + body - 2] = 0;
        out[5 + body - 1] = 0;
    }
    uint32_t length = (uint32_t)body + 4;
    switch (below(10)) {
    case 0: length = (uint32_t)below(8); break;             /* too short */
    case 1: length = (uint32_t)(next_random()); break;      /* anything */
    case 2: length += (uint32_t)below(100000); break;       /* longer than what follows */
    default: break;
    }
    put32(out + 1, length);
    return 5 + body;
}

static size_t make_stream(uint8_t *out, size_t cap) {
    size_t len = 0;
    size_t parts = 1 + below(12);
    for (size_t i = 0; i < parts && len + 64 < cap; i++) {
        if (below(8) == 0) {
            size_t n = below(16);
            for (size_t j = 0; j < n && len < cap; j++) out[len++] = (uint8_t)next_random();
        } else {
            len += make_message(out + len, cap - len);
        }
    }
    if (len && below(3) == 0) out[below(len)] ^= (uint8_t)(1 + below(255)); /* a flipped byte */
    return len;
}

typedef struct {
    const uint8_t *base;
    size_t len;
    int bad;
} Check;

static void on_statement(void *ctx, char style, const uint8_t *name, size_t name_len,
                         const uint8_t *text, size_t len) {
    (void)style;
    Check *c = ctx;
    /* touch every byte: the sanitizer says if it lies outside the held or fed buffer */
    volatile uint8_t sum = 0;
    for (size_t i = 0; i < name_len; i++) sum ^= name[i];
    for (size_t i = 0; i < len; i++) sum ^= text[i];
    (void)sum;
    (void)c;
}

static int run_client(const uint8_t *stream, size_t len) {
    ClientFramer f;
    memset(&f, 0, sizeof f);
    Check check = {stream, len, 0};
    size_t fed = 0, forwarded = 0;
    int failed = 0;
    while (fed < len) {
        size_t n = 1 + below(len - fed < 9000 ? len - fed : 9000);
        if (below(3) == 0) n = 1 + below(len - fed < 7 ? len - fed : 7);
        /* a copy of its own: the sanitizer sees reads past the chunk */
        uint8_t *chunk = malloc(n);
        memcpy(chunk, stream + fed, n);
        const uint8_t *out;
        size_t out_len;
        int from_data = client_feed(&f, chunk, n, &out, &out_len, on_statement, &check);
        if (from_data < 0) return 2;
        if (failed && out_len) return 10; /* nothing after a violation */
        if (forwarded + out_len > fed + n) return 11;
        if (memcmp(out, stream + forwarded, out_len) != 0) return 12;
        forwarded += out_len;
        client_commit(&f, from_data, out_len);
        free(chunk);
        fed += n;
        if (f.violation) failed = 1;
    }
    buf_free(&f.held);
    return check.bad;
}

static int run_server(const uint8_t *stream, size_t len) {
    ServerFramer f;
    memset(&f, 0, sizeof f);
    size_t fed = 0, forwarded = 0;
    int failed = 0;
    while (fed < len) {
        size_t n = 1 + below(len - fed < 9000 ? len - fed : 9000);
        uint8_t *chunk = malloc(n);
        memcpy(chunk, stream + fed, n);
        const uint8_t *out;
        size_t out_len;
        int from_data = server_feed(&f, chunk, n, &out, &out_len);
        if (from_data < 0) return 3;
        if (failed && out_len) return 20;
        if (forwarded + out_len > fed + n) return 21;
        if (memcmp(out, stream + forwarded, out_len) != 0) return 22;
        forwarded += out_len;
        server_commit(&f, from_data, out_len);
        free(chunk);
        fed += n;
        if (f.violation) failed = 1;
    }
    buf_free(&f.held);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s SEED ITERATIONS\n", argv[0]);
        return 64;
    }
    rng_state = strtoull(argv[1], NULL, 10) | 1;
    long iterations = strtol(argv[2], NULL, 10);
    size_t cap = 1 << 16;
    uint8_t *stream = malloc(cap);
    long checked = 0;
    for (long i = 0; i < iterations; i++) {
        size_t len = make_stream(stream, cap);
        int rc = run_client(stream, len);
        if (rc == 0) rc = run_server(stream, len);
        if (rc != 0) {
            fprintf(stderr, "iteration %ld: check %d failed\n", i, rc);
            return rc;
        }
        checked++;
    }
    free(stream);
    printf("%ld streams framed both ways\n", checked);
    return 0;
}
