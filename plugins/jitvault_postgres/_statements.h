/*
 * A statement's recording entry rendered in C, off the Python side: the JSON object of a
 * recorded query event (json_statement), byte for byte what plugin_api.render_statement makes
 * of it (json.dumps(..., ensure_ascii=True, sort_keys=True, separators=(",", ":")) of the
 * name and text decoded with bytes.decode("utf-8", "replace")). tests/unit/test_pg_native_json.py
 * holds the two against each other on arbitrary bytes.
 *
 * The decoding replaces each maximal ill-formed subsequence with one U+FFFD, as CPython's UTF-8
 * decoder does (the Unicode Standard's recommended practice, chapter 3, "U+FFFD Substitution
 * of Maximal Subparts"); the escaping is json's encode_basestring_ascii: \" \\ \n \r \t \b \f,
 * every other character outside ' '..'~' as \uXXXX (lowercase hex, a surrogate pair above
 * U+FFFF).
 */
#ifndef JITVAULT_STATEMENTS_H
#define JITVAULT_STATEMENTS_H

#include <stddef.h>
#include <stdint.h>

/* the next code point of p[0..n) (n > 0); *used: the bytes it took; 0xFFFD for an ill-formed
 * subsequence (one per maximal subpart) */
static uint32_t utf8_next(const uint8_t *p, size_t n, size_t *used) {
    uint8_t b0 = p[0];
    if (b0 < 0x80) {
        *used = 1;
        return b0;
    }
    size_t need;
    uint8_t lo = 0x80, hi = 0xBF;
    uint32_t cp;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        need = 1;
        cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        need = 2;
        cp = b0 & 0x0F;
        if (b0 == 0xE0) lo = 0xA0;
        if (b0 == 0xED) hi = 0x9F; /* no surrogates */
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        need = 3;
        cp = b0 & 0x07;
        if (b0 == 0xF0) lo = 0x90;
        if (b0 == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
    } else {
        *used = 1;
        return 0xFFFD;
    }
    size_t i = 1;
    for (; i <= need; i++) {
        if (i >= n) break;
        uint8_t b = p[i];
        uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (b < l || b > h) break;
        cp = (cp << 6) | (b & 0x3F);
    }
    if (i <= need) { /* ill-formed: the valid prefix is one maximal subpart */
        *used = i;
        return 0xFFFD;
    }
    *used = need + 1;
    return cp;
}

static const char HEX[] = "0123456789abcdef";

/* the JSON string (quotes included) of p[0..n) decoded as above; -1 when out of memory */
static int json_text(Buf *out, const uint8_t *p, size_t n) {
    /* at most 6 bytes per input byte: \uXXXX for one byte, a surrogate pair for four */
    if (n > (SIZE_MAX - 2 - out->len) / 6 || buf_reserve(out, n * 6 + 2) < 0) return -1;
    uint8_t *w = out->data + out->len;
    *w++ = '"';
    size_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        if (b >= 0x20 && b <= 0x7E && b != '"' && b != '\\') { /* the common case */
            *w++ = b;
            i++;
            continue;
        }
        size_t used;
        uint32_t cp = utf8_next(p + i, n - i, &used);
        i += used;
        char esc = 0;
        switch (cp) {
        case '"': esc = '"'; break;
        case '\\': esc = '\\'; break;
        case '\n': esc = 'n'; break;
        case '\r': esc = 'r'; break;
        case '\t': esc = 't'; break;
        case '\b': esc = 'b'; break;
        case '\f': esc = 'f'; break;
        }
        if (esc) {
            *w++ = '\\';
            *w++ = (uint8_t)esc;
            continue;
        }
        uint32_t units[2] = {cp, 0};
        int count = 1;
        if (cp > 0xFFFF) {
            uint32_t v = cp - 0x10000;
            units[0] = 0xD800 | ((v >> 10) & 0x3FF);
            units[1] = 0xDC00 | (v & 0x3FF);
            count = 2;
        }
        for (int k = 0; k < count; k++) {
            *w++ = '\\';
            *w++ = 'u';
            *w++ = (uint8_t)HEX[(units[k] >> 12) & 0xF];
            *w++ = (uint8_t)HEX[(units[k] >> 8) & 0xF];
            *w++ = (uint8_t)HEX[(units[k] >> 4) & 0xF];
            *w++ = (uint8_t)HEX[units[k] & 0xF];
        }
    }
    *w++ = '"';
    out->len = (size_t)(w - out->data);
    return 0;
}

/* one recorded statement's JSON object, appended to out (a comma first unless out is empty):
 * style 'Q' {"kind":"simple","text":...}; 'P' {"kind":"extended","text":...}, with "name"
 * between them when name_len > 0; 'B' (a statement run again) {"kind":"execute",
 * "name":...}, "" for the unnamed statement, text unused */
static int json_statement(Buf *out, char style, const uint8_t *name, size_t name_len,
                          const uint8_t *text, size_t len) {
    static const char simple[] = "{\"kind\":\"simple\"";
    static const char extended[] = "{\"kind\":\"extended\"";
    static const char execute[] = "{\"kind\":\"execute\"";
    static const char name_key[] = ",\"name\":";
    static const char text_key[] = ",\"text\":";
    if (out->len && buf_append(out, (const uint8_t *)",", 1) < 0) return -1;
    const char *head = style == 'Q' ? simple : style == 'P' ? extended : execute;
    size_t head_len = style == 'Q'   ? sizeof simple - 1
                      : style == 'P' ? sizeof extended - 1
                                     : sizeof execute - 1;
    if (buf_append(out, (const uint8_t *)head, head_len) < 0) return -1;
    if (style == 'B' || (style == 'P' && name_len)) {
        if (buf_append(out, (const uint8_t *)name_key, sizeof name_key - 1) < 0) return -1;
        if (json_text(out, name, name_len) < 0) return -1;
    }
    if (style != 'B') {
        if (buf_append(out, (const uint8_t *)text_key, sizeof text_key - 1) < 0) return -1;
        if (json_text(out, text, len) < 0) return -1;
    }
    return buf_append(out, (const uint8_t *)"}", 1);
}

#endif
