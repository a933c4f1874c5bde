/*
 * The PostgreSQL proxy's framing of both directions, sans-IO and free of Python (used by
 * _relay.c, and by the sanitizer fuzz test in tests/native/): the same rules as
 * protocol.FrontendRelay (client -> server) and frontend.BackendFramer (server -> client).
 */
#ifndef JITVAULT_PG_FRAMING_H
#define JITVAULT_PG_FRAMING_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MESSAGE_LENGTH (1u << 30)
#define SERVER_HOLD_LIMIT (1u << 20)
/* a Bind's portal and statement names must end within its first BIND_HEAD_MAX bytes of body */
#define BIND_HEAD_MAX 1024

/* ---- violations (Python words them: protocol.relay_violation, same numbers) ----------- */
enum {
    V_NONE = 0,
    V_AFTER_END = 1,
    V_UNKNOWN_TYPE = 2,
    V_BAD_LENGTH = 3,
    V_TOO_LONG = 4,
    V_TERMINATE_TRAILING = 5,
    V_NOT_NUL_TERMINATED = 6,
    V_TRAILING = 7,
    V_TRUNCATED = 8,
    V_NEGATIVE_COUNT = 9,
    V_NAMES_TOO_LONG = 10,
};

typedef struct {
    uint8_t *data;
    size_t len, cap;
} Buf;

/* room for n more bytes after the first len (capacity doubled from 256); -1 when out of memory */
static int buf_reserve(Buf *b, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        uint8_t *d = realloc(b->data, cap);
        if (d == NULL) return -1;
        b->data = d;
        b->cap = cap;
    }
    return 0;
}

static int buf_append(Buf *b, const uint8_t *p, size_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

static void buf_consume(Buf *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
    } else {
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
    }
    if (b->len == 0 && b->cap > 16384) { /* an idle session keeps no big buffer */
        free(b->data);
        b->data = NULL;
        b->cap = 0;
    }
}

static void buf_free(Buf *b) {
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* ---- the client framer -------------------------------------------------------------------- */

/* what the framer surfaces: a message's type, the statement name it carries (a Parse's, or a
 * Bind's run again: name_len 0 otherwise) and its text (a Query's or Parse's statement) */
typedef void (*emit_fn)(void *ctx, char style, const uint8_t *name, size_t name_len,
                        const uint8_t *text, size_t len);

typedef struct {
    Buf held;          /* a partial header, or an inspected message being completed */
    size_t need;       /* the bytes the held message needs before it is scanned again */
    uint64_t through;  /* bytes of a streamed message still to come */
    int terminated;
    int unnamed_parsed; /* the unnamed statement was parsed in this cycle and not yet bound:
                         * its first Bind is the run its Parse records, and every later one
                         * (or one after the cycle's end) a run again */
    int violation;
    uint8_t vtype;
    int64_t vlength;
} ClientFramer;

static int is_frontend_type(uint8_t t) {
    switch (t) {
    case 'Q': case 'P': case 'B': case 'E': case 'D': case 'C': case 'S':
    case 'H': case 'F': case 'd': case 'c': case 'f': case 'X':
        return 1;
    default:
        return 0;
    }
}

static const uint8_t *find_nul(const uint8_t *p, const uint8_t *end) {
    return memchr(p, 0, (size_t)(end - p));
}

/* check a complete Q/P/X message (body = v[body..end)); emit it with its text (and a Parse
 * with its statement's name), and note what it tells f (the end, an unnamed Parse); 0 or a
 * violation */
static int surface(ClientFramer *f, uint8_t type, const uint8_t *body, const uint8_t *end,
                   emit_fn emit, void *ctx) {
    if (type == 'X') {
        if (body != end) return V_TERMINATE_TRAILING;
        emit(ctx, 'X', NULL, 0, NULL, 0);
        f->terminated = 1;
        return V_NONE;
    }
    const uint8_t *name = body;
    size_t name_len = 0;
    if (type == 'P') {
        const uint8_t *name_end = find_nul(body, end);
        if (name_end == NULL) return V_NOT_NUL_TERMINATED;
        name_len = (size_t)(name_end - body);
        body = name_end + 1;
    }
    const uint8_t *nul = find_nul(body, end);
    if (nul == NULL) return V_NOT_NUL_TERMINATED;
    if (type == 'Q') {
        if (nul != end - 1) return V_TRAILING;
    } else {
        ptrdiff_t rest = end - nul - 1;
        if (rest < 2) return V_TRUNCATED;
        int16_t count = (int16_t)(((uint16_t)nul[1] << 8) | nul[2]);
        if (count < 0) return V_NEGATIVE_COUNT;
        if (rest - 2 != 4 * (ptrdiff_t)count)
            return rest - 2 < 4 * (ptrdiff_t)count ? V_TRUNCATED : V_TRAILING;
    }
    emit(ctx, (char)type, name, name_len, body, (size_t)(nul - body));
    if (type == 'P' && name_len == 0) f->unnamed_parsed = 1;
    return V_NONE;
}

/* a Bind at v[pos..) with size - pos bytes of it in hand (its body: length - 4 bytes): 1 once
 * its names are read (and a run again emitted as 'B' with its statement's name: every Bind of
 * a named statement, and of the unnamed one but the first after its Parse in its cycle), 0
 * when more must come (held, and looked at again with each read: its names may end in any),
 * or -violation */
static int bind_names(ClientFramer *f, const uint8_t *v, size_t pos, size_t size,
                      int64_t length, emit_fn emit, void *ctx) {
    size_t body_len = (size_t)length - 4;
    size_t head = body_len < BIND_HEAD_MAX ? body_len : BIND_HEAD_MAX;
    size_t have = size - pos - 5;
    if (have > head) have = head;
    const uint8_t *b = v + pos + 5;
    const uint8_t *portal_end = find_nul(b, b + have);
    const uint8_t *name_end = portal_end ? find_nul(portal_end + 1, b + have) : NULL;
    if (name_end == NULL) {
        if (have < head) return 0;
        return head == body_len ? -V_NOT_NUL_TERMINATED : -V_NAMES_TOO_LONG;
    }
    size_t name_len = (size_t)(name_end - portal_end - 1);
    if (name_len == 0 && f->unnamed_parsed) f->unnamed_parsed = 0;
    else emit(ctx, 'B', portal_end + 1, name_len, NULL, 0);
    return 1;
}

/* scan v[0..size): how many bytes may be forwarded; sets f->need, f->violation */
static size_t client_scan(ClientFramer *f, const uint8_t *v, size_t size, emit_fn emit,
                          void *ctx) {
    size_t pos = 0;
    f->need = 0;
    if (f->through) {
        pos = f->through < size ? (size_t)f->through : size;
        f->through -= pos;
    }
    while (pos < size) {
        if (f->terminated) {
            f->violation = V_AFTER_END;
            return pos;
        }
        if (size - pos < 5) break;
        uint8_t type = v[pos];
        int64_t length = (int32_t)be32(v + pos + 1);
        f->vtype = type;
        f->vlength = length;
        if (!is_frontend_type(type)) {
            f->violation = V_UNKNOWN_TYPE;
            return pos;
        }
        if (length < 4) {
            f->violation = V_BAD_LENGTH;
            return pos;
        }
        if (length > (int64_t)MAX_MESSAGE_LENGTH) {
            f->violation = V_TOO_LONG;
            return pos;
        }
        size_t end = pos + 1 + (size_t)length;
        if (type == 'Q' || type == 'P' || type == 'X') {
            if (end > size) {
                f->need = end - pos;
                break;
            }
            int v_ = surface(f, type, v + pos + 5, v + end, emit, ctx);
            if (v_ != V_NONE) {
                f->violation = v_;
                return pos;
            }
        } else {
            if (type == 'B') { /* a statement run again is recorded by its name */
                int got = bind_names(f, v, pos, size, length, emit, ctx);
                if (got < 0) {
                    f->violation = -got;
                    return pos;
                }
                if (got == 0) break;
            }
            /* Sync and FunctionCall each end a cycle the server answers with one
             * ReadyForQuery (a Query does too: its text is surfaced above); an unnamed
             * Parse not bound in its own cycle (a Describe first) was a preparation, not a
             * run: its first Bind in a later cycle is a run again, with its own duration */
            if (type == 'S' || type == 'F') {
                emit(ctx, (char)type, NULL, 0, NULL, 0);
                f->unnamed_parsed = 0;
            }
            if (end > size) {
                f->through = end - size;
                end = size;
            }
        }
        pos = end;
    }
    return pos;
}

/*
 * Feed new bytes. On return, out and out_len are the bytes to forward now (inside `data` or the
 * held buffer); call client_commit(f, out_len) once they are used. -1: out of memory.
 */
static int client_feed(ClientFramer *f, const uint8_t *data, size_t n, const uint8_t **out,
                       size_t *out_len, emit_fn emit, void *ctx) {
    *out = data;
    *out_len = 0;
    if (f->violation) return 0;
    if (f->need && f->held.len + n < f->need) { /* a long statement still arriving */
        if (buf_append(&f->held, data, n) < 0) return -1;
        return 0;
    }
    if (f->held.len) {
        if (buf_append(&f->held, data, n) < 0) return -1;
        size_t pos = client_scan(f, f->held.data, f->held.len, emit, ctx);
        *out = f->held.data;
        *out_len = f->violation ? 0 : pos;
        return 0;
    }
    size_t pos = client_scan(f, data, n, emit, ctx);
    *out = data;
    *out_len = f->violation ? 0 : pos;
    if (f->violation) return 1;
    if (pos < n && buf_append(&f->held, data + pos, n - pos) < 0) return -1;
    /* mark: the held bytes are a copy; nothing to consume from them */
    return 1;
}

/* after a client_feed that returned 0 with bytes out of the held buffer */
static void client_commit(ClientFramer *f, int from_data, size_t used) {
    if (!from_data) buf_consume(&f->held, used);
    if (f->violation) buf_free(&f->held);
}

/* ---- the server framer -------------------------------------------------------------------- */

typedef struct {
    Buf held;
    uint64_t through;
    int violation;
    uint32_t readies; /* ReadyForQuery messages seen (the relay takes and zeroes the count) */
    /* a NotificationResponse from the session's own backend (real_pid) is shown as from the
     * process id the client was given in its BackendKeyData (given_pid), as
     * frontend.BackendFramer does; map_pid 0: none is rewritten */
    int map_pid;
    uint32_t real_pid, given_pid;
} ServerFramer;

/* the one body it changes, in place: see map_pid */
static size_t server_scan(ServerFramer *f, uint8_t *v, size_t size) {
    size_t pos = 0;
    if (f->through) {
        pos = f->through < size ? (size_t)f->through : size;
        f->through -= pos;
    }
    while (size - pos >= 5) {
        int64_t length = (int32_t)be32(v + pos + 1);
        if (length < 4) {
            f->violation = 1;
            return pos;
        }
        size_t end = pos + 1 + (size_t)length;
        if (end > size) {
            if (end - pos > SERVER_HOLD_LIMIT) {
                f->through = end - size;
                pos = size;
            }
            break;
        }
        if (v[pos] == 'Z') f->readies++;
        else if (v[pos] == 'A' && f->map_pid && length >= 8 && be32(v + pos + 5) == f->real_pid)
            put_be32(v + pos + 5, f->given_pid);
        pos = end;
    }
    return pos;
}

/* same contract as client_feed, but ``data`` may be changed (map_pid) */
static int server_feed(ServerFramer *f, uint8_t *data, size_t n, const uint8_t **out,
                       size_t *out_len) {
    *out = data;
    *out_len = 0;
    if (f->violation) return 0;
    if (f->held.len) {
        if (buf_append(&f->held, data, n) < 0) return -1;
        *out = f->held.data;
        *out_len = server_scan(f, f->held.data, f->held.len);
        if (f->violation) *out_len = 0;
        return 0;
    }
    size_t pos = server_scan(f, data, n);
    *out_len = f->violation ? 0 : pos;
    if (f->violation) return 1;
    if (pos < n && buf_append(&f->held, data + pos, n - pos) < 0) return -1;
    return 1;
}

static void server_commit(ServerFramer *f, int from_data, size_t used) {
    if (!from_data) buf_consume(&f->held, used);
    if (f->violation) buf_free(&f->held);
}

#endif
