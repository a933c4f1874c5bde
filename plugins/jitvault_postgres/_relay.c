/*
 * The PostgreSQL proxy's native relay: the steady state of plain-TCP sessions, outside the GIL.
 *
 * Once a session is logged in (in Python: TLS, SCRAM, the upstream login, the cancel keys),
 * frontend.py hands its two sockets to an Engine: one thread per process, one epoll loop over
 * every such session. A side that speaks TLS is handed over with its TLS connection, made and
 * handshaken by Python's ssl module: the engine takes over its OpenSSL object (see ssl_of) and
 * decrypts and encrypts that side's bytes from then on. It moves bytes both ways with the same
 * framing rules as the Python relay (protocol.FrontendRelay and frontend.BackendFramer):
 *
 *   client -> server: every message's type and length are checked; Query, Parse and Terminate
 *     are held until complete, checked as the server checks them, and their statement text is
 *     rendered as the recorder's JSON (_statements.h) and queued *before* the message is
 *     forwarded; everything else streams through.
 *   server -> client: cut at message boundaries (an incomplete message under 1 MiB is held), so
 *     that a FATAL message can be put in whenever the session is cut; a NotificationResponse
 *     from the session's own backend names the process id its client was given (map_pid).
 *
 * Python drains the queue (Engine.take) when the engine's eventfd says something waits:
 * statements (recorded by the core), and the end of a session (its sockets then wait, unread,
 * for Engine.close, which writes the last message, lingers and closes). While the recorder is
 * behind (Engine.set_gate(False)) or the queue is full, no client is read. No Python object is
 * touched by the engine thread; the queue and the commands are under one mutex.
 *
 * ClientFramer exposes the client-side framing alone (sans-IO), so that tests can hold it
 * against protocol.FrontendRelay byte for byte.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>
#ifdef JV_TLS
#include <openssl/err.h>
#include <openssl/ssl.h>
#else
typedef struct ssl_st SSL; /* built without OpenSSL's headers: no side is ever TLS */
#endif

#define READ_CHUNK (64 * 1024)
/* the queue of statements waiting for Python: clients are not read above either bound (one
 * client read then adds at most READ_CHUNK / 6 statements: far less than the recorder's queue
 * holds above the level where it asks the relays to wait) */
#define QUEUE_LIMIT_BYTES (4u << 20)
#define QUEUE_LIMIT_EVENTS 4096
/* statements wake Python at most this often (their messages are not held meanwhile: only their
 * hand-over to the recorder waits), or as soon as this many wait (counted as the queue counts
 * them: a statement and, once its cycle is answered, its duration, so about half as many
 * statements; at 256, pgbench on a 2-core machine woke the loop about three times per 10 ms,
 * bench/README.md); ends wake it at once. The delay is a timerfd armed once per hand-over,
 * not an epoll_wait timeout: a short timeout arms a kernel timer on every sleep, twice per
 * query at one client, and that cost the engine a quarter of its CPU (a virtual machine's
 * timer is dear to program; bench/README.md). */
#define NOTIFY_DELAY_NS 10000000L
#define NOTIFY_BATCH 1024
#define QUEUE_FULL(e) ((e)->ev_bytes > QUEUE_LIMIT_BYTES || (e)->ev_count > QUEUE_LIMIT_EVENTS)

#include "_framing.h"
#include "_statements.h"
#include "_cycles.h"

/* ---- the engine --------------------------------------------------------------------------- */

enum { ST_LIVE, ST_PARKED, ST_LINGER, ST_DEAD };

/* why a session stopped by itself (Python words it) */
enum {
    END_CLIENT_CLOSED = 1,
    END_CLIENT_LOST = 2,
    END_UPSTREAM_CLOSED = 3,
    END_UPSTREAM_LOST = 4,
    END_CLIENT_VIOLATION = 5,
    END_UPSTREAM_VIOLATION = 6,
    END_NO_MEMORY = 7,
};

typedef struct Relay {
    long long sid;
    int cfd, sfd;
    SSL *tls[2]; /* the client's and the server's TLS connection, where a side has one */
    int state;
    ClientFramer cf;
    ServerFramer sf;
    Buf to_server, to_client; /* bytes the peer has not taken yet */
    uint32_t cmask, smask;    /* what epoll watches now */
    int gated;                /* client reading stopped by the gate */
    double deadline;          /* ST_LINGER: when to close anyway */
    Cycles cycles;            /* the client's cycles the server has not answered yet */
    /* its newest 'q' event, while Python has not taken it (take_gen unchanged): durations
     * are added to it rather than queued as events of their own */
    struct Event *last_q;
    uint64_t last_q_gen;
    struct Relay *prev, *next;
} Relay;

typedef struct Event {
    int kind; /* 'q' statements, 'e' ended, 'c' closed */
    long long sid;
    char style;
    int code;
    uint8_t vtype;
    int64_t vlength;
    uint8_t *text; /* 'q': the statements of one client read, as JSON objects (_statements.h) */
    size_t len, cap;
    size_t count; /* 'q': how many */
    int64_t at;   /* 'q': when its statements were read (monotonic us; 0: durations only) */
    struct Event *next;
} Event;

typedef struct Command {
    int kind; /* 'a' add, 'c' close, 'g' gate changed, 's' stop */
    Relay *relay;
    long long sid;
    uint8_t *last;
    size_t last_len;
    uint8_t *term;
    size_t term_len;
    double linger;
    struct Command *next;
} Command;

typedef struct {
    PyObject_HEAD
    int epfd, wakefd, notifyfd;
    int timerfd; /* the statements' hand-over delay (its epoll entry: &timerfd) */
    pthread_t thread;
    int running;
    pthread_mutex_t lock;
    /* under lock */
    Event *ev_head, *ev_tail;
    size_t ev_bytes, ev_count;
    uint64_t take_gen; /* how many takes so far: an event of an older one is Python's */
    int notified;
    Command *cmd_head, *cmd_tail;
    int gate_open; /* Python's gate */
    /* the engine thread's own */
    Relay *relays;
    Relay *dead; /* ended this turn: freed once the turn's events are handled */
    int gate_closed_now; /* the gate as the thread last applied it */
    int lingering;       /* relays in ST_LINGER (a turn looks at deadlines only if some are) */
    int statements_waiting; /* statements queued without waking Python (the timer is armed) */
    uint8_t *scratch; /* what a socket gave */
    uint8_t *plain;   /* what a TLS side's bytes decrypt to */
    uint8_t *sealed;  /* what a TLS side's bytes encrypt to */
} Engine;

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void notify_python(Engine *e) {
    /* lock held */
    if (!e->notified) {
        e->notified = 1;
        uint64_t one = 1;
        ssize_t w = write(e->notifyfd, &one, sizeof one);
        (void)w;
    }
}

static void push_event(Engine *e, Event *ev) {
    pthread_mutex_lock(&e->lock);
    if (e->ev_tail) e->ev_tail->next = ev;
    else e->ev_head = ev;
    e->ev_tail = ev;
    e->ev_bytes += ev->len + sizeof(Event);
    e->ev_count++;
    notify_python(e);
    pthread_mutex_unlock(&e->lock);
}

static int gate_closed(Engine *e) {
    pthread_mutex_lock(&e->lock);
    int closed = !e->gate_open || QUEUE_FULL(e);
    pthread_mutex_unlock(&e->lock);
    return closed;
}

/* statements were queued: Python is woken when the delay is up (or sooner, by a full batch or
 * an end); at most one arming per delay */
static void arm_hand_over(Engine *e) {
    struct itimerspec when = {.it_value = {.tv_sec = 0, .tv_nsec = NOTIFY_DELAY_NS}};
    e->statements_waiting = 1;
    if (timerfd_settime(e->timerfd, 0, &when, NULL) < 0) {
        /* no timer: hand over at once rather than late */
        e->statements_waiting = 0;
        pthread_mutex_lock(&e->lock);
        notify_python(e);
        pthread_mutex_unlock(&e->lock);
    }
}

/* the delay is up: what waits goes to Python now */
static void hand_over(Engine *e) {
    uint64_t expirations;
    ssize_t rd = read(e->timerfd, &expirations, sizeof expirations);
    (void)rd;
    e->statements_waiting = 0;
    pthread_mutex_lock(&e->lock);
    if (e->ev_head != NULL) notify_python(e);
    pthread_mutex_unlock(&e->lock);
}

static int64_t monotonic_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* the statements of one client read, rendered (JSON) before they are queued */
typedef struct {
    Buf json;
    size_t count;
    int terminated;
    int failed;
    Cycles *cycles;
    int64_t now_us; /* the read's time, once a cycle needed it (0: not yet) */
} Collect;

static void collect_statement(void *ctx, char style, const uint8_t *name, size_t name_len,
                              const uint8_t *text, size_t len) {
    Collect *c = ctx;
    if (style == 'X') {
        c->terminated = 1;
        return;
    }
    int statement = style == 'Q' || style == 'P' || style == 'B';
    if (statement && c->now_us == 0) c->now_us = monotonic_us();
    cycles_message(c->cycles, style, c->now_us);
    if (!statement || c->failed) return;
    if (json_statement(&c->json, style, name, name_len, text, len) < 0) c->failed = 1;
    else c->count++;
}

static void update_mask(Engine *e, Relay *r, int fd, uint32_t *current, uint32_t want) {
    if (*current == want) return;
    struct epoll_event ev = {.events = want, .data.ptr = (void *)((uintptr_t)r | (fd == r->sfd))};
    if (*current == 0) epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev);
    else if (want == 0) epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
    else epoll_ctl(e->epfd, EPOLL_CTL_MOD, fd, &ev);
    *current = want;
}

/* recompute what each side waits for */
static void rearm(Engine *e, Relay *r) {
    uint32_t cm = 0, sm = 0;
    if (r->state == ST_LIVE) {
        /* a live side stays watched even when it is not read: epoll reports an error or a
         * hang-up whatever the mask, so a side that dies while its peer is behind (or its
         * client is gated) ends the session instead of going unnoticed */
        cm = sm = EPOLLERR;
        if (r->to_server.len == 0 && !r->gated) cm |= EPOLLIN;
        if (r->to_client.len == 0) sm |= EPOLLIN;
        if (r->to_client.len) cm |= EPOLLOUT;
        if (r->to_server.len) sm |= EPOLLOUT;
    } else if (r->state == ST_LINGER) {
        cm = r->to_client.len ? EPOLLOUT : EPOLLIN;
    }
    update_mask(e, r, r->cfd, &r->cmask, cm);
    if (r->sfd >= 0) update_mask(e, r, r->sfd, &r->smask, sm);
}

static void park(Engine *e, Relay *r, int code) {
    if (r->state != ST_LIVE) return;
    r->state = ST_PARKED;
    rearm(e, r);
    Event *ev = calloc(1, sizeof(Event));
    if (ev == NULL) return; /* Python's cut at expiry still ends it */
    ev->kind = 'e';
    ev->sid = r->sid;
    ev->code = code;
    ev->vtype = r->cf.vtype;
    ev->vlength = r->cf.vlength;
    ev->style = (char)r->cf.violation;
    push_event(e, ev);
}

/* send what we can of p[0..n) to fd, queue the rest in out; -1 on a broken connection */
static int send_or_queue(int fd, Buf *out, const uint8_t *p, size_t n) {
    if (n == 0) return 0;
    if (out->len == 0) {
        while (n > 0) {
            ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w < 0) {
                if (errno == EINTR) continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK) break;
                return -1;
            }
            p += w;
            n -= (size_t)w;
        }
    }
    if (n > 0 && buf_append(out, p, n) < 0) return -1;
    return 0;
}

static int flush_out(int fd, Buf *out) {
    size_t done = 0;
    while (done < out->len) {
        ssize_t w = send(fd, out->data + done, out->len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return -1;
        }
        done += (size_t)w;
    }
    buf_consume(out, done);
    return 0;
}

/* ---- TLS sides ---------------------------------------------------------------------------- */

/* the engine's references to a relay's TLS connections (Python's objects keep theirs) */
static void drop_tls(SSL *tls[2]) {
#ifdef JV_TLS
    for (int side = 0; side < 2; side++)
        if (tls[side] != NULL) SSL_free(tls[side]);
#endif
    tls[0] = tls[1] = NULL;
}

#ifdef JV_TLS
/* what the side's TLS connection has made (records, alerts, post-handshake messages) goes to its
 * socket; -1 on a broken connection */
static int tls_flush(Engine *e, SSL *tls, int fd, Buf *out) {
    BIO *sealed = SSL_get_wbio(tls);
    while (BIO_ctrl_pending(sealed) > 0) {
        int got = BIO_read(sealed, e->sealed, READ_CHUNK);
        if (got <= 0 || send_or_queue(fd, out, e->sealed, (size_t)got) < 0) return -1;
    }
    return 0;
}
#endif

/* p[0..n) to a side: sent (what the socket takes now) or queued in out, encrypted first where the
 * side is TLS; -1 on a broken connection */
static int side_send(Engine *e, SSL *tls, int fd, Buf *out, const uint8_t *p, size_t n) {
#ifdef JV_TLS
    if (tls != NULL) {
        while (n > 0) { /* into a memory BIO: never a retry, at most a short write */
            int w = SSL_write(tls, p, n > INT_MAX ? INT_MAX : (int)n);
            if (w <= 0) {
                ERR_clear_error();
                return -1;
            }
            p += w;
            n -= (size_t)w;
        }
        return tls_flush(e, tls, fd, out);
    }
#endif
    return send_or_queue(fd, out, p, n);
}

/* a TLS side's close_notify, queued for its socket after what is queued already */
static void side_close_notify(Engine *e, SSL *tls, int fd, Buf *out) {
#ifdef JV_TLS
    if (tls == NULL) return;
    if (SSL_shutdown(tls) < 0) ERR_clear_error();
    (void)tls_flush(e, tls, fd, out);
#endif
}

/* queue rendered recording objects of a session for Python (json is the event's from now on,
 * or freed on failure), read at monotonic time ``at`` (0: durations, which need no time);
 * -1: out of memory */
static int queue_rendered(Engine *e, Relay *r, Buf *json, size_t count, int64_t at) {
    Event *ev = calloc(1, sizeof(Event));
    if (ev == NULL) {
        buf_free(json);
        return -1;
    }
    if (json->cap > 65536 && json->cap / 2 > json->len) { /* a big statement's reserve */
        uint8_t *fit = realloc(json->data, json->len);
        if (fit != NULL) {
            json->data = fit;
            json->cap = json->len; /* what a duration added later must grow it from */
        }
    }
    ev->kind = 'q';
    ev->sid = r->sid;
    ev->text = json->data;
    ev->len = json->len;
    ev->cap = json->cap;
    ev->count = count;
    ev->at = at;
    pthread_mutex_lock(&e->lock);
    r->last_q = ev;
    r->last_q_gen = e->take_gen;
    e->ev_bytes += ev->len + sizeof(Event);
    e->ev_count += ev->count;
    if (e->ev_tail) e->ev_tail->next = ev;
    else e->ev_head = ev;
    e->ev_tail = ev;
    if (e->ev_count >= NOTIFY_BATCH) notify_python(e);
    pthread_mutex_unlock(&e->lock);
    if (!e->statements_waiting) arm_hand_over(e);
    return 0;
}

static size_t format_u64(char *out, uint64_t v) {
    char digits[20];
    size_t k = 0;
    do {
        digits[k++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < k; i++) out[i] = digits[k - 1 - i];
    return k;
}

/* ReadyForQuery messages came: the cycles they end, as ,{"done":[statements,microseconds]}
 * objects in the session's recording (read back as its statements' durations), added to its
 * newest 'q' event while Python has not taken it (the common case: a statement and its answer
 * within one hand-over), else queued as an event */
/* a ,{"done":[n,us]} object: 10 + 20 + 1 + 20 + 2 bytes at most */
#define DONE_MAX 53

static int record_readies(Engine *e, Relay *r) {
    uint32_t readies = r->sf.readies;
    r->sf.readies = 0;
    int64_t now = monotonic_us(), duration = 0;
    /* each object ends a cycle taken off the ring, which holds at most CYCLES_MAX */
    uint8_t objects[CYCLES_MAX * DONE_MAX];
    size_t used = 0, count = 0;
    while (readies-- && used + DONE_MAX <= sizeof objects) {
        uint32_t n = cycles_ready(&r->cycles, now, &duration);
        if (n == 0) continue;
        char *w = (char *)objects + used;
        memcpy(w, ",{\"done\":[", 10);
        w += 10;
        w += format_u64(w, n);
        *w++ = ',';
        w += format_u64(w, (uint64_t)(duration > 0 ? duration : 0));
        *w++ = ']';
        *w++ = '}';
        used = (size_t)((uint8_t *)w - objects);
        count++;
    }
    if (count == 0) return 0;
    pthread_mutex_lock(&e->lock);
    Event *last = r->last_q != NULL && r->last_q_gen == e->take_gen ? r->last_q : NULL;
    if (last != NULL && last->len + used > last->cap) {
        size_t cap = last->cap * 2 > last->len + used ? last->cap * 2 : last->len + used;
        uint8_t *grown = realloc(last->text, cap);
        if (grown == NULL) {
            last = NULL;
        } else {
            last->text = grown;
            last->cap = cap;
        }
    }
    if (last != NULL) {
        memcpy(last->text + last->len, objects, used);
        last->len += used;
        last->count += count;
        e->ev_bytes += used;
        e->ev_count += count;
        if (e->ev_count >= NOTIFY_BATCH) notify_python(e);
        pthread_mutex_unlock(&e->lock);
        return 0;
    }
    pthread_mutex_unlock(&e->lock);
    Buf own = {0}; /* the objects without their leading comma */
    if (buf_append(&own, objects + 1, used - 1) < 0) return -1;
    return queue_rendered(e, r, &own, count, 0);
}

static void from_client(Engine *e, Relay *r, const uint8_t *data, size_t n) {
    Collect c = {.count = 0, .cycles = &r->cycles};
    const uint8_t *out;
    size_t out_len;
    int from_data = client_feed(&r->cf, data, n, &out, &out_len, collect_statement, &c);
    if (from_data < 0 || c.failed || r->cf.violation) {
        int violation = from_data >= 0 && !c.failed;
        buf_free(&c.json);
        client_commit(&r->cf, from_data < 0 ? 1 : from_data, 0);
        park(e, r, violation ? END_CLIENT_VIOLATION : END_NO_MEMORY);
        return;
    }
    /* the statements are queued before their messages leave */
    if (c.count && queue_rendered(e, r, &c.json, c.count, c.now_us) < 0) {
        client_commit(&r->cf, from_data, 0);
        park(e, r, END_NO_MEMORY);
        return;
    }
    int broken = side_send(e, r->tls[1], r->sfd, &r->to_server, out, out_len) < 0;
    client_commit(&r->cf, from_data, out_len);
    if (broken) park(e, r, END_UPSTREAM_LOST);
    else if (c.terminated) park(e, r, END_CLIENT_CLOSED);
}

static void from_server(Engine *e, Relay *r, uint8_t *data, size_t n) {
    const uint8_t *out;
    size_t out_len;
    int from_data = server_feed(&r->sf, data, n, &out, &out_len);
    if (from_data < 0) {
        park(e, r, END_NO_MEMORY);
        return;
    }
    if (r->sf.readies && record_readies(e, r) < 0) {
        server_commit(&r->sf, from_data, 0);
        park(e, r, END_NO_MEMORY);
        return;
    }
    int broken = side_send(e, r->tls[0], r->cfd, &r->to_client, out, out_len) < 0;
    server_commit(&r->sf, from_data, out_len);
    if (r->sf.violation) park(e, r, END_UPSTREAM_VIOLATION);
    else if (broken) park(e, r, END_CLIENT_LOST);
}

static void deliver(Engine *e, Relay *r, int server_side, uint8_t *data, size_t n) {
    if (server_side) from_server(e, r, data, n);
    else from_client(e, r, data, n);
}

/* what a side's socket gave (data[0..n)), as plaintext to the relay: decrypted first where the
 * side is TLS (n 0: what its TLS connection holds already) */
static void received(Engine *e, Relay *r, int server_side, uint8_t *data, size_t n) {
    SSL *tls = r->tls[server_side];
    if (tls == NULL) {
        deliver(e, r, server_side, data, n);
        return;
    }
#ifdef JV_TLS
    int lost = server_side ? END_UPSTREAM_LOST : END_CLIENT_LOST;
    if (n > 0 && BIO_write(SSL_get_rbio(tls), data, (int)n) != (int)n) {
        park(e, r, END_NO_MEMORY);
        return;
    }
    while (r->state == ST_LIVE) {
        int got = SSL_read(tls, e->plain, READ_CHUNK);
        if (got > 0) {
            deliver(e, r, server_side, e->plain, (size_t)got);
            continue;
        }
        int why = SSL_get_error(tls, got);
        ERR_clear_error();
        if (why == SSL_ERROR_WANT_READ) break;
        /* close_notify: the peer closed; anything else (a bad record, an alert): broken */
        if (why == SSL_ERROR_ZERO_RETURN)
            park(e, r, server_side ? END_UPSTREAM_CLOSED : END_CLIENT_CLOSED);
        else park(e, r, lost);
        return;
    }
    /* what reading made (a KeyUpdate's answer) goes out */
    if (r->state == ST_LIVE &&
        tls_flush(e, tls, server_side ? r->sfd : r->cfd,
                  server_side ? &r->to_server : &r->to_client) < 0)
        park(e, r, lost);
#endif
}

static void finish_linger(Engine *e, Relay *r) {
    if (r->state == ST_LINGER) e->lingering--;
    update_mask(e, r, r->cfd, &r->cmask, 0);
    close(r->cfd);
    r->cfd = -1;
    if (r->prev) r->prev->next = r->next;
    else e->relays = r->next;
    if (r->next) r->next->prev = r->prev;
    Event *ev = calloc(1, sizeof(Event));
    if (ev != NULL) {
        ev->kind = 'c';
        ev->sid = r->sid;
        push_event(e, ev);
    }
    r->state = ST_DEAD;
    r->next = e->dead;
    e->dead = r;
}

static void free_dead(Engine *e) {
    while (e->dead) {
        Relay *r = e->dead;
        e->dead = r->next;
        buf_free(&r->cf.held);
        buf_free(&r->sf.held);
        buf_free(&r->to_server);
        buf_free(&r->to_client);
        drop_tls(r->tls);
        free(r);
    }
}

static void on_ready(Engine *e, Relay *r, int server_side, uint32_t events) {
    if (r->state == ST_DEAD) return;
    if (r->state == ST_LINGER) {
        if (server_side) return;
        if (r->to_client.len) {
            if (flush_out(r->cfd, &r->to_client) < 0) {
                finish_linger(e, r);
                return;
            }
            if (r->to_client.len == 0) shutdown(r->cfd, SHUT_WR);
            rearm(e, r);
            return;
        }
        ssize_t got = recv(r->cfd, e->scratch, READ_CHUNK, MSG_DONTWAIT);
        if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK))
            finish_linger(e, r);
        return;
    }
    if (r->state != ST_LIVE) return;
    int fd = server_side ? r->sfd : r->cfd;
    if (events & EPOLLOUT) {
        Buf *out = server_side ? &r->to_server : &r->to_client;
        if (flush_out(fd, out) < 0) {
            park(e, r, server_side ? END_UPSTREAM_LOST : END_CLIENT_LOST);
            return;
        }
    }
    if (events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
        if (!server_side && !r->gated && gate_closed(e)) {
            r->gated = 1;
            e->gate_closed_now = 1;
        }
        int held = server_side ? r->to_client.len != 0 : (r->to_server.len != 0 || r->gated);
        if (!held) {
            ssize_t got = recv(fd, e->scratch, READ_CHUNK, MSG_DONTWAIT);
            if (got > 0) {
                received(e, r, server_side, e->scratch, (size_t)got);
            } else if (got == 0) {
                park(e, r, server_side ? END_UPSTREAM_CLOSED : END_CLIENT_CLOSED);
            } else if (errno != EAGAIN && errno != EINTR && errno != EWOULDBLOCK) {
                park(e, r, server_side ? END_UPSTREAM_LOST : END_CLIENT_LOST);
            }
        } else if (events & (EPOLLHUP | EPOLLERR)) {
            /* not read now, and dead: reported again on every turn until handled */
            park(e, r, server_side ? END_UPSTREAM_LOST : END_CLIENT_LOST);
        }
    }
    if (r->state == ST_LIVE) rearm(e, r);
}

static Relay *find_relay(Engine *e, long long sid) {
    for (Relay *r = e->relays; r; r = r->next)
        if (r->sid == sid) return r;
    return NULL;
}

static void start_close(Engine *e, Command *c) {
    Relay *r = find_relay(e, c->sid);
    if (r == NULL || r->state == ST_LINGER) return;
    r->state = ST_LINGER;
    e->lingering++;
    if (r->sfd >= 0) {
        update_mask(e, r, r->sfd, &r->smask, 0);
        if (c->term_len && r->to_server.len == 0 && r->cf.through == 0 && r->cf.held.len == 0) {
            /* what the socket takes now: the server's connection closes right after */
            (void)side_send(e, r->tls[1], r->sfd, &r->to_server, c->term, c->term_len);
            side_close_notify(e, r->tls[1], r->sfd, &r->to_server);
        }
        close(r->sfd);
        r->sfd = -1;
    }
    /* the last message only where the client's stream is at a message boundary */
    if (c->last_len && r->sf.through == 0) {
        if (side_send(e, r->tls[0], r->cfd, &r->to_client, c->last, c->last_len) < 0) {
            finish_linger(e, r);
            return;
        }
    }
    side_close_notify(e, r->tls[0], r->cfd, &r->to_client);
    buf_free(&r->sf.held);
    r->deadline = now_seconds() + c->linger;
    if (flush_out(r->cfd, &r->to_client) < 0) {
        finish_linger(e, r);
        return;
    }
    if (r->to_client.len == 0) shutdown(r->cfd, SHUT_WR);
    rearm(e, r);
}

static void start_relay(Engine *e, Relay *r, const uint8_t *to_server, size_t ns,
                        uint8_t *to_client, size_t nc) {
    r->next = e->relays;
    if (e->relays) e->relays->prev = r;
    e->relays = r;
    if (nc) from_server(e, r, to_client, nc);
    if (ns && r->state == ST_LIVE) from_client(e, r, to_server, ns);
    /* a TLS side's records that came with the login and were not read yet */
    for (int side = 0; side < 2; side++)
        if (r->tls[side] != NULL && r->state == ST_LIVE) received(e, r, side, NULL, 0);
    if (r->state == ST_LIVE) rearm(e, r);
}

static void run_commands(Engine *e, int *stop) {
    pthread_mutex_lock(&e->lock);
    Command *c = e->cmd_head;
    e->cmd_head = e->cmd_tail = NULL;
    pthread_mutex_unlock(&e->lock);
    while (c) {
        Command *next = c->next;
        if (c->kind == 'a') {
            start_relay(e, c->relay, c->last, c->last_len, c->term, c->term_len);
        } else if (c->kind == 'c') {
            start_close(e, c);
        } else if (c->kind == 's') {
            *stop = 1;
        }
        free(c->last);
        free(c->term);
        free(c);
        c = next;
    }
    /* the gate: read the held-back clients again once it opens */
    if (e->gate_closed_now && !gate_closed(e)) {
        e->gate_closed_now = 0;
        for (Relay *r = e->relays; r; r = r->next) {
            if (r->gated) {
                r->gated = 0;
                if (r->state == ST_LIVE) rearm(e, r);
            }
        }
    }
}

static void *engine_main(void *arg) {
    Engine *e = arg;
    /* an OS-level name, so that top -H, perf and /proc tell the relay from Python's threads */
    (void)pthread_setname_np(pthread_self(), "jv-pg-relay");
    struct epoll_event events[256];
    int stop = 0;
    while (!stop) {
        int lingering = e->lingering > 0; /* not a walk over every relay on every turn */
        int timeout = lingering || e->gate_closed_now ? 50 : -1;
        int n = epoll_wait(e->epfd, events, 256, timeout);
        if (n < 0 && errno != EINTR) break;
        for (int i = 0; i < n; i++) {
            void *p = events[i].data.ptr;
            if (p == NULL) {
                uint64_t v;
                ssize_t rd = read(e->wakefd, &v, sizeof v);
                (void)rd;
                run_commands(e, &stop);
                continue;
            }
            if (p == (void *)&e->timerfd) {
                hand_over(e);
                continue;
            }
            Relay *r = (Relay *)((uintptr_t)p & ~(uintptr_t)1);
            on_ready(e, r, (int)((uintptr_t)p & 1), events[i].events);
        }
        if (lingering) {
            double t = now_seconds();
            Relay *r = e->relays;
            while (r) {
                Relay *next = r->next;
                if (r->state == ST_LINGER && t >= r->deadline) finish_linger(e, r);
                r = next;
            }
        }
        if (e->gate_closed_now) run_commands(e, &stop);
        free_dead(e);
    }
    /* stopping: every socket still held is closed */
    while (e->relays) {
        Relay *r = e->relays;
        if (r->sfd >= 0) close(r->sfd);
        r->sfd = -1;
        finish_linger(e, r);
    }
    free_dead(e);
    return NULL;
}

/* queue a command for the engine thread: from here on it is the engine's (an add's sockets
 * included), so nothing after this may fail. A wake-up that cannot be written (the eventfd's
 * counter full) means the thread is awake anyway. */
static void post(Engine *e, Command *c) {
    pthread_mutex_lock(&e->lock);
    if (e->cmd_tail) e->cmd_tail->next = c;
    else e->cmd_head = c;
    e->cmd_tail = c;
    pthread_mutex_unlock(&e->lock);
    uint64_t one = 1;
    ssize_t w = write(e->wakefd, &one, sizeof one);
    (void)w;
}

static uint8_t *copy_bytes(const char *p, Py_ssize_t n) {
    uint8_t *d = malloc(n > 0 ? (size_t)n : 1);
    if (d != NULL && n > 0) memcpy(d, p, (size_t)n);
    return d;
}

/* ---- Engine: the Python type ------------------------------------------------------------- */

static void free_events(Event *ev) {
    while (ev) {
        Event *next = ev->next;
        free(ev->text);
        free(ev);
        ev = next;
    }
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) return -1;
    if (self->scratch != NULL) { /* its thread and descriptors would leak */
        PyErr_SetString(PyExc_RuntimeError, "the native relay is initialised already");
        return -1;
    }
    self->epfd = self->wakefd = self->notifyfd = self->timerfd = -1;
    self->scratch = malloc(READ_CHUNK);
    self->plain = malloc(READ_CHUNK);
    self->sealed = malloc(READ_CHUNK);
    if (self->scratch == NULL || self->plain == NULL || self->sealed == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    pthread_mutex_init(&self->lock, NULL);
    self->gate_open = 1;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    self->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    self->notifyfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    self->timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
    if (self->epfd < 0 || self->wakefd < 0 || self->notifyfd < 0 || self->timerfd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = &self->timerfd};
    if (epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->wakefd, &ev) < 0 ||
        epoll_ctl(self->epfd, EPOLL_CTL_ADD, self->timerfd, &tev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    int rc = pthread_create(&self->thread, NULL, engine_main, self);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->running = 1;
    return 0;
}

static PyObject *Engine_stop(Engine *self, PyObject *Py_UNUSED(ignored)) {
    if (self->running) {
        Command *c = calloc(1, sizeof(Command));
        if (c == NULL) return PyErr_NoMemory();
        c->kind = 's';
        post(self, c);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->thread, NULL);
        Py_END_ALLOW_THREADS
        self->running = 0;
    }
    Py_RETURN_NONE;
}

static void Engine_dealloc(Engine *self) {
    if (self->running) {
        Command *c = calloc(1, sizeof(Command));
        if (c != NULL) {
            c->kind = 's';
            post(self, c);
            pthread_join(self->thread, NULL);
        }
        self->running = 0;
    }
    free_events(self->ev_head);
    if (self->epfd >= 0) close(self->epfd);
    if (self->wakefd >= 0) close(self->wakefd);
    if (self->notifyfd >= 0) close(self->notifyfd);
    if (self->timerfd >= 0) close(self->timerfd);
    free(self->scratch);
    free(self->plain);
    free(self->sealed);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Engine_fileno(Engine *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(self->notifyfd);
}

/* ---- taking over a TLS connection from Python's ssl module -------------------------------- */

#ifdef JV_TLS
/* The head of CPython's _ssl._SSLSocket (the object behind ssl.SSLObject._sslobj), as in
 * CPython 3.11 to 3.13: its socket's weak reference, then its OpenSSL connection. Built for
 * another Python, the engine takes no TLS connection; ssl_of checks what it found before
 * anything is taken. */
#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030E0000 && !defined(PYPY_VERSION)
#define JV_SSL_LAYOUT_KNOWN 1
#endif
typedef struct {
    PyObject_HEAD
    PyObject *socket;
    SSL *ssl;
} SSLSocketHead;

/* the OpenSSL connection of a handshaken _ssl._SSLSocket that this module's OpenSSL can drive,
 * else NULL: the type by name, the connection's back-pointer to its Python object (which _ssl
 * sets), and its context's method, one of this library's own (a Python linked with another copy
 * of OpenSSL has other method tables) */
static SSL *ssl_of(PyObject *obj) {
#ifndef JV_SSL_LAYOUT_KNOWN
    return NULL;
#endif
    if (strcmp(Py_TYPE(obj)->tp_name, "_ssl._SSLSocket") != 0) return NULL;
    SSL *ssl = ((SSLSocketHead *)obj)->ssl;
    if (ssl == NULL || SSL_get_app_data(ssl) != (void *)obj) return NULL;
    const SSL_METHOD *method = SSL_CTX_get_ssl_method(SSL_get_SSL_CTX(ssl));
    if (method != TLS_server_method() && method != TLS_client_method() && method != TLS_method())
        return NULL;
    if (!SSL_is_init_finished(ssl)) return NULL;
    return ssl;
}

/* move what a memory BIO holds to another; -1 on failure */
static int move_pending(BIO *from, BIO *to) {
    char chunk[4096];
    while (BIO_ctrl_pending(from) > 0) {
        int got = BIO_read(from, chunk, (int)sizeof chunk);
        if (got <= 0 || BIO_write(to, chunk, got) != got) return -1;
    }
    return 0;
}

/* The engine's own reference to obj's TLS connection, which Python must not use from here on:
 * it is given two memory BIOs of the engine's (holding what Python's held: records not read
 * yet, and records not sent yet), so that nothing Python does with its ssl.SSLObject's BIOs
 * afterwards (asyncio reads its outgoing BIO when the transport goes) touches the engine's;
 * renegotiation is refused from then on. NULL with an exception set where it cannot be taken. */
static SSL *take_tls(PyObject *obj) {
    SSL *ssl = ssl_of(obj);
    if (ssl == NULL) {
        PyErr_SetString(PyExc_ValueError, "the native relay cannot take this TLS connection");
        return NULL;
    }
    BIO *in = BIO_new(BIO_s_mem()), *out = BIO_new(BIO_s_mem());
    if (in == NULL || out == NULL || move_pending(SSL_get_rbio(ssl), in) < 0 ||
        move_pending(SSL_get_wbio(ssl), out) < 0) {
        BIO_free(in);
        BIO_free(out);
        ERR_clear_error();
        PyErr_NoMemory();
        return NULL;
    }
    /* empty: "read again later", as Python's MemoryBIO says it, not the end of the stream */
    BIO_set_mem_eof_return(in, -1);
    BIO_set_mem_eof_return(out, -1);
    SSL_up_ref(ssl);
    SSL_set_bio(ssl, in, out); /* drops the connection's references to Python's BIOs */
    SSL_set_options(ssl, SSL_OP_NO_RENEGOTIATION);
    return ssl;
}
#endif

/* tls_supported(obj): can the engine take over this TLS connection (ssl.SSLObject._sslobj)? */
static PyObject *tls_supported(PyObject *module, PyObject *obj) {
#ifdef JV_TLS
    if (ssl_of(obj) != NULL) Py_RETURN_TRUE;
#endif
    Py_RETURN_FALSE;
}

static PyObject *Engine_add(Engine *self, PyObject *args) {
    long long sid;
    int cfd, sfd;
    const char *ts, *tc;
    Py_ssize_t ns, nc;
    int real_pid = 0, given_pid = 0;
    PyObject *tls_objects[2] = {Py_None, Py_None};
    if (!PyArg_ParseTuple(args, "Liiy#y#|iiOO", &sid, &cfd, &sfd, &ts, &ns, &tc, &nc, &real_pid,
                          &given_pid, &tls_objects[0], &tls_objects[1]))
        return NULL;
    if (!self->running) {
        PyErr_SetString(PyExc_RuntimeError, "the native relay is stopped");
        return NULL;
    }
    SSL *tls[2] = {NULL, NULL};
    for (int side = 0; side < 2; side++) {
        if (tls_objects[side] == Py_None) continue;
#ifdef JV_TLS
        tls[side] = take_tls(tls_objects[side]);
#else
        PyErr_SetString(PyExc_ValueError, "the native relay was built without TLS");
#endif
        if (tls[side] == NULL) {
            drop_tls(tls);
            return NULL;
        }
    }
    Relay *r = calloc(1, sizeof(Relay));
    Command *c = calloc(1, sizeof(Command));
    uint8_t *a = copy_bytes(ts, ns), *b = copy_bytes(tc, nc);
    if (r == NULL || c == NULL || a == NULL || b == NULL) {
        free(r);
        free(c);
        free(a);
        free(b);
        drop_tls(tls);
        return PyErr_NoMemory();
    }
    r->tls[0] = tls[0];
    r->tls[1] = tls[1];
    r->sid = sid;
    r->cfd = cfd;
    r->sfd = sfd;
    r->state = ST_LIVE;
    if (real_pid != 0 || given_pid != 0) {
        r->sf.map_pid = 1;
        r->sf.real_pid = (uint32_t)real_pid;
        r->sf.given_pid = (uint32_t)given_pid;
    }
    c->kind = 'a';
    c->relay = r;
    c->last = a;
    c->last_len = (size_t)ns;
    c->term = b;
    c->term_len = (size_t)nc;
    post(self, c);
    Py_RETURN_NONE;
}

static PyObject *Engine_close(Engine *self, PyObject *args) {
    long long sid;
    const char *last, *term;
    Py_ssize_t nl, nt;
    double linger;
    if (!PyArg_ParseTuple(args, "Ly#y#d", &sid, &last, &nl, &term, &nt, &linger)) return NULL;
    if (!self->running) Py_RETURN_NONE;
    Command *c = calloc(1, sizeof(Command));
    uint8_t *a = copy_bytes(last, nl), *b = copy_bytes(term, nt);
    if (c == NULL || a == NULL || b == NULL) {
        free(c);
        free(a);
        free(b);
        return PyErr_NoMemory();
    }
    c->kind = 'c';
    c->sid = sid;
    c->last = a;
    c->last_len = (size_t)nl;
    c->term = b;
    c->term_len = (size_t)nt;
    c->linger = linger;
    post(self, c);
    Py_RETURN_NONE;
}

static PyObject *Engine_set_gate(Engine *self, PyObject *arg) {
    int open = PyObject_IsTrue(arg);
    if (open < 0) return NULL;
    pthread_mutex_lock(&self->lock);
    self->gate_open = open;
    pthread_mutex_unlock(&self->lock);
    if (open && self->running) {
        uint64_t one = 1;
        ssize_t w = write(self->wakefd, &one, sizeof one);
        (void)w;
    }
    Py_RETURN_NONE;
}

/* a session's "q" item while take() merges its statements: pass one sums its size, pass two
 * writes its statements straight into its bytes object (no buffer grown, nothing copied twice) */
typedef struct {
    long long sid;
    size_t len, count;
    Py_ssize_t pos; /* its place in the list */
    PyObject *json; /* pass two: its bytes object, and where the next statements go */
    char *w;
} Run;

/* which run is a session's open one, while take() merges (open addressing over the sessions
 * of one take; a session whose "e" or "c" came keeps its slot, with no run) */
typedef struct {
    long long sid;
    size_t run; /* NO_RUN: none open */
    int used;
} Slot;
#define NO_RUN ((size_t)-1)

static Slot *slot_of(Slot *slots, size_t mask, long long sid) {
    size_t i = ((size_t)sid * 0x9E3779B97F4A7C15ull) & mask;
    while (slots[i].used && slots[i].sid != sid) i = (i + 1) & mask;
    if (!slots[i].used) slots[i] = (Slot){.sid = sid, .run = NO_RUN, .used = 1};
    return &slots[i];
}

/* a {"ago":us}, object: 7 + 20 + 2 bytes at most */
#define AGO_MAX 29

/* the statements' time: how long before this take (at now) they were read; none for
 * durations only (at 0) */
static size_t ago_object(char *out, const Event *e, int64_t now) {
    if (e->at <= 0) return 0;
    memcpy(out, "{\"ago\":", 7);
    size_t n = 7 + format_u64(out + 7, (uint64_t)(now > e->at ? now - e->at : 0));
    memcpy(out + n, "},", 2);
    return n + 2;
}

/* everything queued, in order: ("q", sid, count, statements) for a session's statements (one
 * item per session and take, in the order they were sent; statements: their JSON objects,
 * comma-separated ASCII bytes, see _statements.h, each client read's led by an {"ago":us}
 * object, not counted: how many microseconds before this take it was read, the time its
 * statements are read back with), ("e", sid, code, violation, type, length)
 * when a session stopped by itself, ("c", sid) when its sockets are closed */
static PyObject *Engine_take(Engine *self, PyObject *Py_UNUSED(ignored)) {
    uint64_t v;
    ssize_t rd = read(self->notifyfd, &v, sizeof v);
    (void)rd;
    pthread_mutex_lock(&self->lock);
    int64_t now = monotonic_us();
    Event *ev = self->ev_head;
    int was_full = QUEUE_FULL(self);
    self->ev_head = self->ev_tail = NULL;
    self->ev_bytes = self->ev_count = 0;
    self->take_gen++;
    self->notified = 0;
    pthread_mutex_unlock(&self->lock);
    if (was_full && self->running) {
        uint64_t one = 1;
        ssize_t w = write(self->wakefd, &one, sizeof one);
        (void)w;
    }
    /* one "q" item per session (interleaved sessions would otherwise make one item, and one
     * recorder call, per client read); a session's "e" or "c" ends its item, so that the order
     * of its own events is kept */
    size_t events = 0, nruns = 0;
    for (Event *e = ev; e; e = e->next) events++;
    size_t nslots = 16;
    while (nslots < 2 * events) nslots *= 2;
    Slot *slots = calloc(nslots, sizeof(Slot));
    Run *runs = calloc(events ? events : 1, sizeof(Run));
    size_t *run_of = calloc(events ? events : 1, sizeof(size_t)); /* each event's run */
    PyObject *list = PyList_New(0);
    if (list == NULL) goto fail;
    if (slots == NULL || runs == NULL || run_of == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    char ago[AGO_MAX];
    size_t k = 0;
    for (Event *e = ev; e; e = e->next, k++) { /* pass one: the items, and each run's size */
        Slot *slot = slot_of(slots, nslots - 1, e->sid);
        if (e->kind == 'q') {
            if (slot->run == NO_RUN) {
                slot->run = nruns;
                runs[nruns++] = (Run){.sid = e->sid, .pos = PyList_GET_SIZE(list)};
                if (PyList_Append(list, Py_None) < 0) goto fail;
            }
            Run *run = &runs[slot->run];
            run->len += (run->len ? 1 : 0) + ago_object(ago, e, now) + e->len;
            run->count += e->count;
            run_of[k] = slot->run;
            continue;
        }
        slot->run = NO_RUN;
        PyObject *item;
        if (e->kind == 'e') {
            item = Py_BuildValue("(sLiiiL)", "e", e->sid, e->code, (int)e->style, (int)e->vtype,
                                 (long long)e->vlength);
        } else {
            item = Py_BuildValue("(sL)", "c", e->sid);
        }
        if (item == NULL || PyList_Append(list, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    for (size_t i = 0; i < nruns; i++) {
        runs[i].json = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)runs[i].len);
        if (runs[i].json == NULL) goto fail;
        runs[i].w = PyBytes_AS_STRING(runs[i].json);
    }
    k = 0;
    for (Event *e = ev; e; e = e->next, k++) { /* pass two: the statements, in place */
        if (e->kind != 'q') continue;
        Run *run = &runs[run_of[k]];
        if (run->w != PyBytes_AS_STRING(run->json)) *run->w++ = ',';
        size_t n = ago_object(run->w, e, now);
        memcpy(run->w + n, e->text, e->len);
        run->w += n + e->len;
    }
    for (size_t i = 0; i < nruns; i++) {
        Run *run = &runs[i];
        PyObject *item = Py_BuildValue("(sLnN)", "q", run->sid, (Py_ssize_t)run->count, run->json);
        run->json = NULL; /* the item's (or released by the failure) */
        if (item == NULL) goto fail;
        PyList_SET_ITEM(list, run->pos, item); /* steals item; the placeholder was None */
        Py_DECREF(Py_None);
    }
    free(slots);
    free(runs);
    free(run_of);
    free_events(ev);
    return list;
fail:
    if (runs != NULL)
        for (size_t i = 0; i < nruns; i++) Py_XDECREF(runs[i].json);
    free(slots);
    free(runs);
    free(run_of);
    Py_XDECREF(list);
    free_events(ev);
    return NULL;
}

static PyMethodDef Engine_methods[] = {
    {"fileno", (PyCFunction)Engine_fileno, METH_NOARGS, "The eventfd that is readable when take() has something."},
    {"add", (PyCFunction)Engine_add, METH_VARARGS, "add(sid, client_fd, server_fd, to_server, to_client, real_pid=0, given_pid=0): relay a session (the fds are the engine's from now on); notifications from backend real_pid are shown as from given_pid."},
    {"close", (PyCFunction)Engine_close, METH_VARARGS, "close(sid, last_message, terminate, linger): end a session."},
    {"set_gate", (PyCFunction)Engine_set_gate, METH_O, "set_gate(open): read clients (True) or hold them (False)."},
    {"take", (PyCFunction)Engine_take, METH_NOARGS, "take(): the queued events."},
    {"stop", (PyCFunction)Engine_stop, METH_NOARGS, "stop(): close every socket and end the thread."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "jitvault_postgres._relay.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
    .tp_doc = "The native relay: one thread, one epoll loop over the plain-TCP sessions.",
};

/* ---- ClientFramer: the client framing alone, for tests ----------------------------------- */

typedef struct {
    PyObject_HEAD
    ClientFramer f;
} PyClientFramer;

static void emit_to_list(void *ctx, char style, const uint8_t *name, size_t name_len,
                         const uint8_t *text, size_t len) {
    PyObject *list = ctx;
    PyObject *item = Py_BuildValue("(y#y#y#)", &style, (Py_ssize_t)1,
                                   name ? (const char *)name : "", (Py_ssize_t)name_len,
                                   text ? (const char *)text : "", (Py_ssize_t)len);
    if (item != NULL) {
        PyList_Append(list, item);
        Py_DECREF(item);
    }
}

static PyObject *ClientFramer_feed(PyClientFramer *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *surfaced = PyList_New(0);
    if (surfaced == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    const uint8_t *out;
    size_t out_len;
    int from_data = client_feed(&self->f, view.buf, (size_t)view.len, &out, &out_len,
                                emit_to_list, surfaced);
    PyObject *forward = from_data < 0 ? NULL : PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)out_len);
    if (from_data >= 0) client_commit(&self->f, from_data, out_len);
    PyBuffer_Release(&view);
    if (self->f.violation && PyList_SetSlice(surfaced, 0, PyList_GET_SIZE(surfaced), NULL) < 0) {
        Py_XDECREF(forward);
        Py_DECREF(surfaced);
        return NULL;
    }
    if (forward == NULL || PyErr_Occurred()) {
        Py_XDECREF(forward);
        Py_DECREF(surfaced);
        return from_data < 0 ? PyErr_NoMemory() : NULL;
    }
    return Py_BuildValue("(NNiiL)", forward, surfaced, self->f.violation, (int)self->f.vtype,
                         (long long)self->f.vlength);
}

static void ClientFramer_dealloc(PyClientFramer *self) {
    buf_free(&self->f.held);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef ClientFramer_methods[] = {
    {"feed", (PyCFunction)ClientFramer_feed, METH_O, "feed(data) -> (forward, surfaced, violation, type, length)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ClientFramerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "jitvault_postgres._relay.ClientFramer",
    .tp_basicsize = sizeof(PyClientFramer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)ClientFramer_dealloc,
    .tp_methods = ClientFramer_methods,
    .tp_doc = "The native relay's client-side framing, sans-IO.",
};

/* ---- ServerFramer: the server framing alone, for tests ----------------------------------- */

typedef struct {
    PyObject_HEAD
    ServerFramer f;
} PyServerFramer;

static PyObject *ServerFramer_feed(PyServerFramer *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    /* a copy: the framer may change it (map_pid), the caller's bytes stay as they were */
    size_t n = (size_t)view.len;
    uint8_t *data = copy_bytes(view.buf, view.len);
    PyBuffer_Release(&view);
    if (data == NULL) return PyErr_NoMemory();
    const uint8_t *out;
    size_t out_len;
    int from_data = server_feed(&self->f, data, n, &out, &out_len);
    PyObject *forward = from_data < 0 ? NULL : PyBytes_FromStringAndSize((const char *)out, (Py_ssize_t)out_len);
    if (from_data >= 0) server_commit(&self->f, from_data, out_len);
    free(data);
    if (forward == NULL) return from_data < 0 ? PyErr_NoMemory() : NULL;
    unsigned int readies = self->f.readies;
    self->f.readies = 0;
    return Py_BuildValue("(NiOI)", forward, self->f.violation,
                         self->f.through == 0 ? Py_True : Py_False, readies);
}

static void ServerFramer_dealloc(PyServerFramer *self) {
    buf_free(&self->f.held);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *ServerFramer_notify_pid(PyServerFramer *self, PyObject *args) {
    int real_pid, given_pid;
    if (!PyArg_ParseTuple(args, "ii", &real_pid, &given_pid)) return NULL;
    self->f.map_pid = 1;
    self->f.real_pid = (uint32_t)real_pid;
    self->f.given_pid = (uint32_t)given_pid;
    Py_RETURN_NONE;
}

static PyMethodDef ServerFramer_methods[] = {
    {"feed", (PyCFunction)ServerFramer_feed, METH_O, "feed(data) -> (forward, violation, at_boundary, readies)"},
    {"notify_pid", (PyCFunction)ServerFramer_notify_pid, METH_VARARGS, "notify_pid(real, given): notifications from backend real are shown as from given."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ServerFramerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "jitvault_postgres._relay.ServerFramer",
    .tp_basicsize = sizeof(PyServerFramer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)ServerFramer_dealloc,
    .tp_methods = ServerFramer_methods,
    .tp_doc = "The native relay's server-side framing, sans-IO.",
};

/* ---- Cycles: the statements' cycles alone, for tests ------------------------------------- */

typedef struct {
    PyObject_HEAD
    Cycles c;
} PyCycles;

static PyObject *Cycles_sent(PyCycles *self, PyObject *args) {
    const char *types;
    Py_ssize_t n;
    long long now;
    if (!PyArg_ParseTuple(args, "y#L", &types, &n, &now)) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) cycles_message(&self->c, types[i], now);
    Py_RETURN_NONE;
}

static PyObject *Cycles_ready(PyCycles *self, PyObject *args) {
    unsigned int readies;
    long long now;
    if (!PyArg_ParseTuple(args, "IL", &readies, &now)) return NULL;
    PyObject *done = PyList_New(0);
    if (done == NULL) return NULL;
    while (readies--) {
        int64_t duration = 0;
        uint32_t statements = cycles_ready(&self->c, now, &duration);
        if (statements == 0) continue;
        PyObject *item = Py_BuildValue("(IL)", statements, (long long)(duration > 0 ? duration : 0));
        if (item == NULL || PyList_Append(done, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(done);
            return NULL;
        }
        Py_DECREF(item);
    }
    return done;
}

static PyMethodDef Cycles_methods[] = {
    {"sent", (PyCFunction)Cycles_sent, METH_VARARGS, "sent(types, now_us): client messages relayed"},
    {"ready", (PyCFunction)Cycles_ready, METH_VARARGS, "ready(readies, now_us) -> [(statements, microseconds)]"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CyclesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "jitvault_postgres._relay.Cycles",
    .tp_basicsize = sizeof(PyCycles),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_methods = Cycles_methods,
    .tp_doc = "The native relay's statement cycles (_cycles.h), sans-IO.",
};

/* statement_json(style, name, text): one statement's JSON as the engine renders it (for
 * tests): style b"Q", b"P" or b"B" */
static PyObject *statement_json(PyObject *module, PyObject *args) {
    char style;
    const char *name, *text;
    Py_ssize_t name_len, n;
    if (!PyArg_ParseTuple(args, "cy#y#", &style, &name, &name_len, &text, &n)) return NULL;
    if (style != 'Q' && style != 'P' && style != 'B') {
        PyErr_SetString(PyExc_ValueError, "style must be b'Q', b'P' or b'B'");
        return NULL;
    }
    Buf out = {0};
    if (json_statement(&out, style, (const uint8_t *)name, (size_t)name_len,
                       (const uint8_t *)text, (size_t)n) < 0) {
        buf_free(&out);
        return PyErr_NoMemory();
    }
    PyObject *result = PyBytes_FromStringAndSize((const char *)out.data, (Py_ssize_t)out.len);
    buf_free(&out);
    return result;
}

static PyMethodDef relay_functions[] = {
    {"tls_supported", tls_supported, METH_O,
     "Can the engine take over this TLS connection (an ssl.SSLObject's _sslobj)?"},
    {"statement_json", statement_json, METH_VARARGS, "statement_json(style, name, text) -> the JSON object the engine hands over for a statement."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef relay_module = {
    PyModuleDef_HEAD_INIT, "_relay", "The PostgreSQL proxy's native relay.", -1, relay_functions, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&EngineType) < 0 || PyType_Ready(&ClientFramerType) < 0 ||
        PyType_Ready(&ServerFramerType) < 0 || PyType_Ready(&CyclesType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&relay_module);
    if (m == NULL) return NULL;
    Py_INCREF(&EngineType);
    Py_INCREF(&ClientFramerType);
    Py_INCREF(&ServerFramerType);
    Py_INCREF(&CyclesType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0 ||
        PyModule_AddObject(m, "ClientFramer", (PyObject *)&ClientFramerType) < 0 ||
        PyModule_AddObject(m, "ServerFramer", (PyObject *)&ServerFramerType) < 0 ||
        PyModule_AddObject(m, "Cycles", (PyObject *)&CyclesType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyModule_AddIntConstant(m, "MAX_MESSAGE_LENGTH", MAX_MESSAGE_LENGTH);
    PyModule_AddIntConstant(m, "CYCLES_MAX", CYCLES_MAX);
    return m;
}
