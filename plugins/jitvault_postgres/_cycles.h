/*
 * How long each recorded statement ran: the client's cycles, each answered by one
 * ReadyForQuery. A Query is a cycle of its own; the Parse messages (and the Binds recorded as
 * runs again) before a Sync are one cycle (the extended protocol's statements of one Sync); a
 * FunctionCall, or a Sync with neither (a Describe alone, say), is a cycle with no statement
 * (the first Bind of the unnamed statement after its Parse's cycle ended is recorded as a run
 * again: _framing.h). The server answers the cycles
 * in order, so the oldest cycle still waiting ends at each ReadyForQuery, and its statements'
 * duration is the time from the first of them to that answer.
 *
 * Bounded: past CYCLES_MAX cycles in flight (a client that pipelines without reading), a new
 * cycle joins the newest one, whose duration then covers both. Mirrors
 * protocol.StatementCycles (tests/unit/test_pg_statement_cycles.py holds the two against each
 * other, through _relay.Cycles).
 */
#ifndef JITVAULT_CYCLES_H
#define JITVAULT_CYCLES_H

#include <stdint.h>

#define CYCLES_MAX 32

typedef struct {
    uint32_t statements; /* recorded statements in it */
    uint32_t readies;    /* ReadyForQuery messages that end it (more than 1 once joined) */
    int64_t start_us;    /* when its first statement was sent */
} Cycle;

typedef struct {
    Cycle ring[CYCLES_MAX];
    uint32_t head, len;
    uint32_t open;     /* statements sent in the cycle not yet ended (Parse before its Sync) */
    int64_t open_start;
} Cycles;

static void cycles_statement(Cycles *c, int64_t now_us) {
    if (c->open == 0) c->open_start = now_us;
    c->open++;
}

static void cycles_end(Cycles *c) {
    if (c->len == CYCLES_MAX) {
        Cycle *tail = &c->ring[(c->head + c->len - 1) % CYCLES_MAX];
        if (tail->statements == 0) tail->start_us = c->open_start;
        tail->statements += c->open;
        tail->readies++;
    } else {
        c->ring[(c->head + c->len) % CYCLES_MAX] =
            (Cycle){.statements = c->open, .readies = 1, .start_us = c->open_start};
        c->len++;
    }
    c->open = 0;
}

/* a client message the framer surfaced went to the server: 'Q', 'P' or 'B' (a statement, or
 * one run again, sent at now_us), 'S' or 'F' (a cycle's end); anything else ('X')
 * changes nothing */
static void cycles_message(Cycles *c, char type, int64_t now_us) {
    if (type == 'S' || type == 'F') {
        cycles_end(c);
    } else if (type == 'Q' || type == 'P' || type == 'B') {
        cycles_statement(c, now_us);
        if (type == 'Q') cycles_end(c);
    }
}

/* a ReadyForQuery: how many statements it ends (0: none), and their *duration_us */
static uint32_t cycles_ready(Cycles *c, int64_t now_us, int64_t *duration_us) {
    if (c->len == 0) return 0; /* not an answer to a cycle of this relay's */
    Cycle *h = &c->ring[c->head];
    if (--h->readies > 0) return 0;
    uint32_t n = h->statements;
    *duration_us = now_us - h->start_us;
    c->head = (c->head + 1) % CYCLES_MAX;
    c->len--;
    return n;
}

#endif
