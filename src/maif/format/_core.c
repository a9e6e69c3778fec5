/* The compiled core of the .maif container: the per-record hot loops of full verification and of
 * writing small blocks (ADR 0090).
 *
 * The rule every function here follows: C only PROVES a record valid, or DEFERS to the Python
 * reference. Whenever anything is unusual (compressed, encrypted, metadata, a text id that might be a
 * UUID, a limit reached, a byte out of place) the record is handed back to Python, which runs exactly
 * the code it runs without this module and raises or reports exactly the same typed error. So C never
 * words an error, and can never accept what Python refuses.
 *
 * Hashing is BLAKE3 through the `blake3` package's Python object (the caller passes its type): no
 * hash code lives here. The limits come from maif.limits through set_limits(); until it is called
 * every record is deferred.
 *
 * Byte layout: docs/format/SPEC.md sections 4 and 5. Every multi-byte field is little-endian and read
 * byte by byte, so the host's byte order does not matter.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define MAIF_CORE_ABI 3

#include <math.h>
#include <stdint.h>
#include <string.h>

#define FIXED_HEADER_BYTES 18
#define UUID_BYTES 16
#define DIGEST_BYTES 32
#define INDEX_ENTRY_BYTES 40
#define INDEX_DIGEST_AT 8

#define FIELD_ID_UUID 0x01
#define FIELD_AGENT 0x02
#define FIELD_VERSION 0x04
#define FIELD_PARENTS 0x08
#define FIELD_METADATA 0x10
#define FIELD_KNOWN 0x1f

/* The limits of maif.limits the record rules use; zero (nothing proven) until set_limits(). */
static struct {
    uint64_t payload_bytes_max;
    uint64_t id_bytes_max;
    uint64_t agent_id_bytes_max;
    uint64_t version_bytes_max;
    uint64_t parents_max;
    uint64_t metadata_bytes_max;
    int set;
} limits;

static PyObject *digest_name; /* interned "digest" */

/* ---- small helpers ----------------------------------------------------------------------------- */

static uint64_t
read_le(const unsigned char *at, int size)
{
    uint64_t value = 0;
    for (int shift = 0; shift < size; shift++) {
        value |= (uint64_t)at[shift] << (8 * shift);
    }
    return value;
}

static void
write_le(unsigned char *at, uint64_t value, int size)
{
    for (int shift = 0; shift < size; shift++) {
        at[shift] = (unsigned char)(value >> (8 * shift));
    }
}

/* Whether `size` bytes are valid UTF-8 by Python's own strict decoder (surrogates, overlong forms and
 * code points past U+10FFFF refused); ASCII, the common case, needs no decoder. */
static int
is_utf8(const unsigned char *text, Py_ssize_t size)
{
    Py_ssize_t at = 0;
    while (at < size && text[at] < 0x80) {
        at++;
    }
    if (at == size) {
        return 1;
    }
    PyObject *decoded = PyUnicode_DecodeUTF8((const char *)text, size, "strict");
    if (decoded == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(decoded);
    return 1;
}

/* A length-prefixed text field at *position: proven only if the prefix, the bounds, the limit and
 * UTF-8 all hold. `length_out` receives the text's length in bytes. */
static int
prove_text(const unsigned char *record, Py_ssize_t size, Py_ssize_t *position, int prefix_bytes,
           uint64_t length_min, uint64_t length_max, uint64_t *length_out)
{
    if (size - *position < prefix_bytes) {
        return 0;
    }
    uint64_t length = read_le(record + *position, prefix_bytes);
    *position += prefix_bytes;
    if (length < length_min || length > length_max || (uint64_t)(size - *position) < length) {
        return 0;
    }
    if (!is_utf8(record + *position, (Py_ssize_t)length)) {
        return 0;
    }
    *position += (Py_ssize_t)length;
    *length_out = length;
    return 1;
}

/* BLAKE3(data) through the blake3 package: a new 32-byte bytes object, or NULL with an exception. */
static PyObject *
hash_bytes(PyObject *hasher, PyObject *data)
{
    PyObject *state = PyObject_CallOneArg(hasher, data);
    if (state == NULL) {
        return NULL;
    }
    PyObject *digest = PyObject_CallMethodNoArgs(state, digest_name);
    Py_DECREF(state);
    if (digest != NULL && (!PyBytes_CheckExact(digest) || PyBytes_GET_SIZE(digest) != DIGEST_BYTES)) {
        Py_DECREF(digest);
        PyErr_SetString(PyExc_TypeError, "the hasher's digest() must return 32 bytes");
        return NULL;
    }
    return digest;
}

/* BLAKE3(prefix || first || second) for short inputs (leaf and node hashes, chained record digests). */
static PyObject *
hash_joined(PyObject *hasher, int prefix, const void *first, Py_ssize_t first_size, const void *second,
            Py_ssize_t second_size)
{
    Py_ssize_t prefix_size = prefix >= 0 ? 1 : 0;
    PyObject *joined = PyBytes_FromStringAndSize(NULL, prefix_size + first_size + second_size);
    if (joined == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(joined);
    if (prefix >= 0) {
        out[0] = (char)prefix;
    }
    memcpy(out + prefix_size, first, (size_t)first_size);
    if (second_size) {
        memcpy(out + prefix_size + first_size, second, (size_t)second_size);
    }
    PyObject *digest = hash_bytes(hasher, joined);
    Py_DECREF(joined);
    return digest;
}

/* ---- verification ------------------------------------------------------------------------------ */

#define PROVEN 1
#define PROVEN_BUT_METADATA 2 /* all but the metadata's own bytes: Python decodes those */

/* PROVEN if the stored record is a valid plain block by every SPEC section 4 rule (no storage flags, the
 * body exactly metadata length + payload length bytes); PROVEN_BUT_METADATA if that holds and metadata is
 * present, which starts at *metadata_at (relative to the record); 0 means "not proven": Python decides. */
static int
prove_plain_record(const unsigned char *record, Py_ssize_t size, Py_ssize_t *metadata_at,
                   uint64_t *metadata_length)
{
    if (!limits.set || size < FIXED_HEADER_BYTES) {
        return 0;
    }
    for (int at = 0; at < 4; at++) {
        if (record[at] < 0x21 || record[at] > 0x7e) {
            return 0;
        }
    }
    unsigned storage_flags = record[4], field_flags = record[5];
    if (storage_flags != 0 || (field_flags & ~FIELD_KNOWN)) {
        return 0;
    }
    uint64_t timestamp_bits = read_le(record + 6, 8);
    double timestamp;
    memcpy(&timestamp, &timestamp_bits, sizeof timestamp);
    if (!isfinite(timestamp)) {
        return 0;
    }
    uint64_t payload_length = read_le(record + 14, 4);
    if (payload_length > limits.payload_bytes_max) {
        return 0;
    }
    Py_ssize_t position = FIXED_HEADER_BYTES;
    uint64_t length;
    if (field_flags & FIELD_ID_UUID) {
        if (size - position < UUID_BYTES) {
            return 0;
        }
        position += UUID_BYTES;
    }
    else if (!prove_text(record, size, &position, 2, 1, limits.id_bytes_max, &length) || length == 36) {
        return 0; /* a 36-byte text id might be a UUID stored as text: Python tells */
    }
    if ((field_flags & FIELD_AGENT)
        && !prove_text(record, size, &position, 2, 1, limits.agent_id_bytes_max, &length)) {
        return 0;
    }
    if (field_flags & FIELD_VERSION) {
        Py_ssize_t text_at = position + 1;
        if (!prove_text(record, size, &position, 1, 0, limits.version_bytes_max, &length)) {
            return 0;
        }
        if (length == 3 && memcmp(record + text_at, "1.0", 3) == 0) {
            return 0;
        }
    }
    if (field_flags & FIELD_PARENTS) {
        if (size - position < 2) {
            return 0;
        }
        uint64_t count = read_le(record + position, 2);
        position += 2;
        if (count == 0 || count > limits.parents_max) {
            return 0;
        }
        for (uint64_t parent = 0; parent < count; parent++) {
            if (!prove_text(record, size, &position, 2, 1, limits.id_bytes_max, &length)) {
                return 0;
            }
        }
    }
    *metadata_length = 0;
    if (field_flags & FIELD_METADATA) {
        if (size - position < 4) {
            return 0;
        }
        *metadata_length = read_le(record + position, 4);
        position += 4;
        if (*metadata_length == 0 || *metadata_length > limits.metadata_bytes_max) {
            return 0;
        }
    }
    /* both are below 2^32, so the sum cannot wrap */
    if ((uint64_t)(size - position) != *metadata_length + payload_length) {
        return 0;
    }
    *metadata_at = position;
    return *metadata_length ? PROVEN_BUT_METADATA : PROVEN;
}

/* The buffers one verification call reads, acquired together and released together. */
typedef struct {
    Py_buffer file, offsets, ends;
    int held;
} Buffers;

static void
release_buffers(Buffers *buffers)
{
    if (buffers->held >= 3) {
        PyBuffer_Release(&buffers->ends);
    }
    if (buffers->held >= 2) {
        PyBuffer_Release(&buffers->offsets);
    }
    if (buffers->held >= 1) {
        PyBuffer_Release(&buffers->file);
    }
    buffers->held = 0;
}

static int
acquire_buffers(Buffers *buffers, PyObject *file, PyObject *offsets, PyObject *ends, Py_ssize_t stop)
{
    buffers->held = 0;
    if (PyObject_GetBuffer(file, &buffers->file, PyBUF_SIMPLE) < 0) {
        return -1;
    }
    buffers->held = 1;
    if (PyObject_GetBuffer(offsets, &buffers->offsets, PyBUF_FORMAT) < 0) {
        release_buffers(buffers);
        return -1;
    }
    buffers->held = 2;
    if (PyObject_GetBuffer(ends, &buffers->ends, PyBUF_FORMAT) < 0) {
        release_buffers(buffers);
        return -1;
    }
    buffers->held = 3;
    Py_buffer *words[2] = {&buffers->offsets, &buffers->ends};
    for (int which = 0; which < 2; which++) {
        if (words[which]->itemsize != 8 || words[which]->format == NULL
            || strcmp(words[which]->format, "Q") != 0 || words[which]->len / 8 < stop) {
            release_buffers(buffers);
            PyErr_SetString(PyExc_ValueError, "offsets and ends must be arrays of 'Q' covering the range");
            return -1;
        }
    }
    return 0;
}

/* The record [offsets[index], ends[index]) if it lies inside the file, else NULL. */
static const unsigned char *
record_at(Buffers *buffers, Py_ssize_t index, Py_ssize_t *size)
{
    uint64_t start = ((const uint64_t *)buffers->offsets.buf)[index];
    uint64_t end = ((const uint64_t *)buffers->ends.buf)[index];
    if (end < start || end > (uint64_t)buffers->file.len) {
        return NULL;
    }
    *size = (Py_ssize_t)(end - start);
    return (const unsigned char *)buffers->file.buf + start;
}

PyDoc_STRVAR(unproven_records_doc,
"unproven_records(file, offsets, ends, first, stop, large_min) -> list[int | tuple[int, int, int]]\n\n"
"The records in [first, stop) C could not prove valid by SPEC section 4 (it proves plain records\n"
"smaller than large_min bytes), in order: an index for a record the caller checks with the Python\n"
"reference, (index, start, end) for one proven but for its metadata, file[start:end], which the\n"
"caller decodes.");

static PyObject *
unproven_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "unproven_records takes 6 arguments");
        return NULL;
    }
    Py_ssize_t first = PyLong_AsSsize_t(args[3]), stop = PyLong_AsSsize_t(args[4]);
    Py_ssize_t large_min = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (first < 0 || stop < first) {
        PyErr_SetString(PyExc_ValueError, "bad range");
        return NULL;
    }
    Buffers buffers;
    if (acquire_buffers(&buffers, args[0], args[1], args[2], stop) < 0) {
        return NULL;
    }
    PyObject *unproven = PyList_New(0);
    for (Py_ssize_t index = first; unproven != NULL && index < stop; index++) {
        Py_ssize_t size = 0, metadata_at = 0;
        uint64_t metadata_length = 0;
        const unsigned char *record = record_at(&buffers, index, &size);
        int proof = record != NULL && size < large_min
                    ? prove_plain_record(record, size, &metadata_at, &metadata_length)
                    : 0;
        if (proof == PROVEN) {
            continue;
        }
        PyObject *item;
        if (proof == PROVEN_BUT_METADATA) {
            Py_ssize_t start = (Py_ssize_t)(record - (const unsigned char *)buffers.file.buf) + metadata_at;
            item = Py_BuildValue("(nnn)", index, start, start + (Py_ssize_t)metadata_length);
        }
        else {
            item = PyLong_FromSsize_t(index);
        }
        if (item == NULL || PyList_Append(unproven, item) < 0) {
            Py_CLEAR(unproven);
        }
        Py_XDECREF(item);
    }
    release_buffers(&buffers);
    return unproven;
}

PyDoc_STRVAR(chain_mismatches_doc,
"chain_mismatches(file, offsets, ends, entries, genesis, first, stop, bytes_budget, large_min,\n"
"                 hasher, mismatches) -> (next_index, bytes_covered)\n\n"
"Checks BLAKE3(previous indexed digest || record) against each indexed digest from `first` on,\n"
"appending the indices that differ to `mismatches`. Stops before `stop`, before a record of at\n"
"least large_min bytes or one outside the file (the caller hashes those), or once bytes_budget\n"
"record bytes are covered.");

static PyObject *
chain_mismatches(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "chain_mismatches takes 11 arguments");
        return NULL;
    }
    PyObject *entries = args[3], *genesis = args[4], *hasher = args[9], *mismatches = args[10];
    Py_ssize_t first = PyLong_AsSsize_t(args[5]), stop = PyLong_AsSsize_t(args[6]);
    Py_ssize_t budget = PyLong_AsSsize_t(args[7]), large_min = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyBytes_CheckExact(entries) || !PyBytes_CheckExact(genesis) || !PyList_CheckExact(mismatches)
        || PyBytes_GET_SIZE(genesis) != DIGEST_BYTES || first < 0 || stop < first
        || PyBytes_GET_SIZE(entries) / INDEX_ENTRY_BYTES < stop) {
        PyErr_SetString(PyExc_ValueError, "chain_mismatches: bad arguments");
        return NULL;
    }
    Buffers buffers;
    if (acquire_buffers(&buffers, args[0], args[1], args[2], stop) < 0) {
        return NULL;
    }
    const char *indexed = PyBytes_AS_STRING(entries);
    Py_ssize_t index = first, covered = 0;
    int failed = 0;
    while (index < stop && covered < budget) {
        Py_ssize_t size = 0;
        const unsigned char *record = record_at(&buffers, index, &size);
        if (record == NULL || size >= large_min) {
            break;
        }
        const char *previous = index ? indexed + (index - 1) * INDEX_ENTRY_BYTES + INDEX_DIGEST_AT
                                     : PyBytes_AS_STRING(genesis);
        PyObject *digest = hash_joined(hasher, -1, previous, DIGEST_BYTES, record, size);
        if (digest == NULL) {
            failed = 1;
            break;
        }
        const char *expected = indexed + index * INDEX_ENTRY_BYTES + INDEX_DIGEST_AT;
        int differs = memcmp(PyBytes_AS_STRING(digest), expected, DIGEST_BYTES) != 0;
        Py_DECREF(digest);
        if (differs) {
            PyObject *number = PyLong_FromSsize_t(index);
            int appended = number != NULL && PyList_Append(mismatches, number) == 0;
            Py_XDECREF(number);
            if (!appended) {
                failed = 1;
                break;
            }
        }
        covered += size;
        index++;
    }
    release_buffers(&buffers);
    if (failed) {
        return NULL;
    }
    return Py_BuildValue("(nn)", index, covered);
}

/* ---- Merkle hashing (RFC 9162 over BLAKE3) ----------------------------------------------------- */

PyDoc_STRVAR(leaf_hashes_doc,
"leaf_hashes(entries, stride, digest_at, hasher) -> list[bytes]\n\n"
"BLAKE3(0x00 || digest) of each 32-byte digest found at `digest_at` in every `stride`-byte entry.");

static PyObject *
leaf_hashes(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "leaf_hashes takes 4 arguments");
        return NULL;
    }
    Py_ssize_t stride = PyLong_AsSsize_t(args[1]), digest_at = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (stride <= 0 || digest_at < 0 || digest_at + DIGEST_BYTES > stride) {
        PyErr_SetString(PyExc_ValueError, "leaf_hashes: bad stride or digest position");
        return NULL;
    }
    Py_buffer entries;
    if (PyObject_GetBuffer(args[0], &entries, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (entries.len % stride) {
        PyBuffer_Release(&entries);
        PyErr_SetString(PyExc_ValueError, "leaf_hashes: entries are not a whole number of strides");
        return NULL;
    }
    Py_ssize_t count = entries.len / stride;
    PyObject *hashes = PyList_New(count);
    for (Py_ssize_t index = 0; hashes != NULL && index < count; index++) {
        const char *digest = (const char *)entries.buf + index * stride + digest_at;
        PyObject *leaf = hash_joined(args[3], 0x00, digest, DIGEST_BYTES, NULL, 0);
        if (leaf == NULL) {
            Py_CLEAR(hashes);
            break;
        }
        PyList_SET_ITEM(hashes, index, leaf);
    }
    PyBuffer_Release(&entries);
    return hashes;
}

PyDoc_STRVAR(merkle_root_doc,
"merkle_root(leaf_hashes, hasher) -> bytes | None\n\n"
"The RFC 9162 root of a non-empty list of bytes leaf hashes (adjacent nodes paired level by level,\n"
"an odd last node carried up); None if the list is empty or holds anything but bytes.");

static PyObject *
merkle_root(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "merkle_root takes 2 arguments");
        return NULL;
    }
    PyObject *leaves = args[0], *hasher = args[1];
    if (!PyList_CheckExact(leaves) || PyList_GET_SIZE(leaves) == 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(leaves);
    for (Py_ssize_t index = 0; index < count; index++) {
        if (!PyBytes_CheckExact(PyList_GET_ITEM(leaves, index))) {
            Py_RETURN_NONE;
        }
    }
    /* One level at a time in a list of our own; each level overwrites the front of the previous one. */
    PyObject *level = PyList_GetSlice(leaves, 0, count);
    if (level == NULL) {
        return NULL;
    }
    while (count > 1) {
        Py_ssize_t pairs = count / 2;
        for (Py_ssize_t pair = 0; pair < pairs; pair++) {
            PyObject *left = PyList_GET_ITEM(level, 2 * pair), *right = PyList_GET_ITEM(level, 2 * pair + 1);
            PyObject *node = hash_joined(hasher, 0x01, PyBytes_AS_STRING(left), PyBytes_GET_SIZE(left),
                                         PyBytes_AS_STRING(right), PyBytes_GET_SIZE(right));
            if (node == NULL) {
                Py_DECREF(level);
                return NULL;
            }
            if (PyList_SetItem(level, pair, node) < 0) { /* steals node, drops the old item */
                Py_DECREF(level);
                return NULL;
            }
        }
        if (count & 1) {
            PyObject *carried = PyList_GET_ITEM(level, count - 1);
            Py_INCREF(carried);
            if (PyList_SetItem(level, pairs, carried) < 0) {
                Py_DECREF(level);
                return NULL;
            }
        }
        count = pairs + (count & 1);
    }
    PyObject *root = PyList_GET_ITEM(level, 0);
    Py_INCREF(root);
    Py_DECREF(level);
    return root;
}

/* ---- writing small blocks ---------------------------------------------------------------------- */

static int
hex_value(Py_UCS1 character)
{
    if (character >= '0' && character <= '9') {
        return character - '0';
    }
    if (character >= 'a' && character <= 'f') {
        return character - 'a' + 10;
    }
    return -1; /* upper case is not the canonical spelling: such an id is stored as text */
}

/* The 16 raw bytes of a canonical (lowercase, hyphenated) UUID string into `raw`; 0 if it is not one. */
static int
uuid_bytes(PyObject *text, unsigned char *raw)
{
    if (!PyUnicode_IS_ASCII(text) || PyUnicode_GET_LENGTH(text) != 36) {
        return 0;
    }
    const Py_UCS1 *characters = PyUnicode_1BYTE_DATA(text);
    int written = 0;
    for (int at = 0; at < 36;) {
        if (at == 8 || at == 13 || at == 18 || at == 23) {
            if (characters[at] != '-') {
                return 0;
            }
            at++;
            continue;
        }
        int high = hex_value(characters[at]), low = hex_value(characters[at + 1]);
        if (high < 0 || low < 0) {
            return 0;
        }
        raw[written++] = (unsigned char)(high << 4 | low);
        at += 2;
    }
    return written == UUID_BYTES;
}

/* UTF-8 of a str into *text (borrowed, cached by the str); 0 if it cannot be encoded or is too long. */
static int
utf8_of(PyObject *value, const char **text, Py_ssize_t *size)
{
    if (!PyUnicode_CheckExact(value)) {
        return 0;
    }
    *text = PyUnicode_AsUTF8AndSize(value, size);
    if (*text == NULL) {
        PyErr_Clear();
        return 0;
    }
    return *size <= 0xffff;
}

static PyObject *attribute_names[8];
static const char *attribute_spellings[8] = {"id",       "block_type", "data",    "metadata",
                                             "timestamp", "agent_id",   "version", "parents"};

/* Encode one plain small block's record (header || metadata || payload) at `out`, which has room for
 * record_bytes_max bytes: its size if encoded, 0 if the block needs the Python writer. Metadata is
 * encoded by the Python reference (`encode_metadata`); if that raises, the Python writer raises it. */
static int
encode_record(PyObject *block, PyObject *known_fourccs, PyObject *encode_metadata,
              Py_ssize_t compression_threshold, Py_ssize_t record_bytes_max, unsigned char *out)
{
    PyObject *values[8] = {NULL};
    PyObject *encoded_metadata = NULL;
    int result = 0;
    for (int which = 0; which < 8; which++) {
        values[which] = PyObject_GetAttr(block, attribute_names[which]);
        if (values[which] == NULL) {
            PyErr_Clear();
            goto done;
        }
    }
    PyObject *id = values[0], *block_type = values[1], *data = values[2], *metadata = values[3];
    PyObject *timestamp = values[4], *agent_id = values[5], *version = values[6], *parents = values[7];
    if (!PyBytes_CheckExact(data) || !PyDict_CheckExact(metadata)
        || !PyFloat_CheckExact(timestamp) || !PyTuple_CheckExact(parents) || PyTuple_GET_SIZE(parents) != 0
        || !PyUnicode_CheckExact(version) || PyUnicode_CompareWithASCIIString(version, "1.0") != 0) {
        goto done;
    }
    Py_ssize_t payload_size = PyBytes_GET_SIZE(data);
    if (payload_size > 0 && payload_size >= compression_threshold) {
        goto done; /* compression might pay: the Python writer decides */
    }
    PyObject *fourcc = PyDict_GetItemWithError(known_fourccs, block_type);
    const char *fourcc_bytes;
    if (fourcc != NULL && PyBytes_CheckExact(fourcc) && PyBytes_GET_SIZE(fourcc) == 4) {
        fourcc_bytes = PyBytes_AS_STRING(fourcc);
    }
    else if (fourcc == NULL && !PyErr_Occurred() && PyUnicode_CheckExact(block_type)
             && PyUnicode_IS_ASCII(block_type) && PyUnicode_GET_LENGTH(block_type) == 4) {
        fourcc_bytes = (const char *)PyUnicode_1BYTE_DATA(block_type);
    }
    else {
        PyErr_Clear();
        goto done;
    }
    unsigned char raw_id[UUID_BYTES];
    const char *id_text = NULL, *agent_text = NULL;
    Py_ssize_t id_size = 0, agent_size = 0;
    int is_uuid = PyUnicode_CheckExact(id) && uuid_bytes(id, raw_id);
    if (!is_uuid && !utf8_of(id, &id_text, &id_size)) {
        goto done;
    }
    if (!utf8_of(agent_id, &agent_text, &agent_size)) {
        goto done;
    }
    Py_ssize_t metadata_size = 0;
    if (PyDict_GET_SIZE(metadata) != 0) {
        encoded_metadata = PyObject_CallOneArg(encode_metadata, metadata);
        if (encoded_metadata == NULL || !PyBytes_CheckExact(encoded_metadata)) {
            PyErr_Clear();
            goto done;
        }
        metadata_size = PyBytes_GET_SIZE(encoded_metadata);
    }
    Py_ssize_t header_size = FIXED_HEADER_BYTES + (is_uuid ? UUID_BYTES : 2 + id_size)
                             + (agent_size ? 2 + agent_size : 0) + (metadata_size ? 4 : 0);
    if (metadata_size >= record_bytes_max || payload_size >= record_bytes_max
        || header_size + metadata_size + payload_size >= record_bytes_max) {
        goto done;
    }
    memcpy(out, fourcc_bytes, 4);
    out[4] = 0; /* storage flags: plain */
    out[5] = (unsigned char)((is_uuid ? FIELD_ID_UUID : 0) | (agent_size ? FIELD_AGENT : 0)
                             | (metadata_size ? FIELD_METADATA : 0));
    double seconds = PyFloat_AS_DOUBLE(timestamp);
    uint64_t seconds_bits;
    memcpy(&seconds_bits, &seconds, sizeof seconds_bits);
    write_le(out + 6, seconds_bits, 8);
    write_le(out + 14, (uint64_t)payload_size, 4);
    unsigned char *field = out + FIXED_HEADER_BYTES;
    if (is_uuid) {
        memcpy(field, raw_id, UUID_BYTES);
        field += UUID_BYTES;
    }
    else {
        write_le(field, (uint64_t)id_size, 2);
        memcpy(field + 2, id_text, (size_t)id_size);
        field += 2 + id_size;
    }
    if (agent_size) {
        write_le(field, (uint64_t)agent_size, 2);
        memcpy(field + 2, agent_text, (size_t)agent_size);
        field += 2 + agent_size;
    }
    if (metadata_size) {
        write_le(field, (uint64_t)metadata_size, 4);
        memcpy(field + 4, PyBytes_AS_STRING(encoded_metadata), (size_t)metadata_size);
        field += 4 + metadata_size;
    }
    memcpy(field, PyBytes_AS_STRING(data), (size_t)payload_size);
    result = (int)(header_size + metadata_size + payload_size);
done:
    for (int which = 0; which < 8; which++) {
        Py_XDECREF(values[which]);
    }
    Py_XDECREF(encoded_metadata);
    return result;
}

PyDoc_STRVAR(encode_records_doc,
"encode_records(blocks, first, block_class, known_fourccs, previous_digest, position,\n"
"               compression_threshold, record_bytes_max, blocks_max, batch_bytes, hasher,\n"
"               records, index, encode_metadata) -> (count, records_size, last_digest)\n\n"
"Encodes blocks[first:] while each is a plain small block of exactly `block_class` (no parents,\n"
"default version, payload under the compression threshold, record under record_bytes_max; metadata\n"
"encoded by calling encode_metadata, the block left to the caller if that raises),\n"
"fewer than blocks_max are done and the records stay under batch_bytes. The records go to the start\n"
"of the bytearray `records` (grown to batch_bytes + record_bytes_max once, never shrunk; the first\n"
"records_size bytes are theirs), their 40-byte index entries (offset from `position`, chained BLAKE3\n"
"digest) are appended to the bytearray `index`. The caller writes the first block not taken with\n"
"the Python writer.");

static PyObject *
encode_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 14) {
        PyErr_SetString(PyExc_TypeError, "encode_records takes 14 arguments");
        return NULL;
    }
    PyObject *blocks = args[0], *block_class = args[2], *known_fourccs = args[3], *previous = args[4];
    PyObject *hasher = args[10], *records = args[11], *index = args[12], *encode_metadata = args[13];
    Py_ssize_t first = PyLong_AsSsize_t(args[1]);
    unsigned long long position = PyLong_AsUnsignedLongLong(args[5]);
    Py_ssize_t threshold = PyLong_AsSsize_t(args[6]), record_bytes_max = PyLong_AsSsize_t(args[7]);
    Py_ssize_t blocks_max = PyLong_AsSsize_t(args[8]), batch_bytes = PyLong_AsSsize_t(args[9]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyList_CheckExact(blocks) || !PyDict_CheckExact(known_fourccs) || !PyBytes_CheckExact(previous)
        || PyBytes_GET_SIZE(previous) != DIGEST_BYTES || first < 0 || !PyByteArray_CheckExact(records)
        || !PyByteArray_CheckExact(index) || record_bytes_max <= 0 || batch_bytes <= 0
        || batch_bytes > PY_SSIZE_T_MAX / 2 - record_bytes_max) {
        PyErr_SetString(PyExc_ValueError, "encode_records: bad arguments");
        return NULL;
    }
    if (PyByteArray_GET_SIZE(records) < batch_bytes + record_bytes_max
        && PyByteArray_Resize(records, batch_bytes + record_bytes_max) < 0) {
        return NULL; /* also refused while a view of `records` is held */
    }
    Py_ssize_t index_size = PyByteArray_GET_SIZE(index), used = 0, count = 0;
    PyObject *last = previous;
    Py_INCREF(last);
    for (Py_ssize_t at = first; at < PyList_GET_SIZE(blocks) && count < blocks_max && used < batch_bytes;
         at++) {
        PyObject *block = PyList_GET_ITEM(blocks, at);
        if ((PyObject *)Py_TYPE(block) != block_class) {
            break;
        }
        unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(records) + used;
        int size = encode_record(block, known_fourccs, encode_metadata, threshold, record_bytes_max, out);
        if (size == 0) {
            break;
        }
        PyObject *digest = hash_joined(hasher, -1, PyBytes_AS_STRING(last), DIGEST_BYTES, out, size);
        if (digest == NULL) {
            goto failed;
        }
        Py_SETREF(last, digest);
        if (PyByteArray_Resize(index, index_size + (count + 1) * INDEX_ENTRY_BYTES) < 0) {
            goto failed;
        }
        unsigned char *entry = (unsigned char *)PyByteArray_AS_STRING(index) + index_size
                               + count * INDEX_ENTRY_BYTES;
        write_le(entry, position + (unsigned long long)used, 8);
        memcpy(entry + INDEX_DIGEST_AT, PyBytes_AS_STRING(last), DIGEST_BYTES);
        used += size;
        count++;
    }
    PyObject *result = Py_BuildValue("(nnN)", count, used, last);
    return result;
failed:
    Py_DECREF(last);
    /* Nothing of this batch is kept: the caller's index must match what it writes. */
    if (PyByteArray_GET_SIZE(index) > index_size) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (PyByteArray_Resize(index, index_size) < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type, value, traceback);
    }
    return NULL;
}

PyDoc_STRVAR(encode_blocks_doc,
"encode_blocks(blocks, block_class, known_fourccs, encode_metadata, codec_version, record_bytes_max,\n"
"              hasher) -> list\n\n"
"codec.encode_block for the plain blocks of the list `blocks`: for each, (encoding, BLAKE3 digest of\n"
"it) when it is exactly `block_class` with no parents, the default version, a float timestamp and an\n"
"encoding (the byte codec_version, then the record) under record_bytes_max bytes; None when the\n"
"Python reference must encode it. Never compresses (a logical encoding has no storage flags).");

static PyObject *
encode_blocks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "encode_blocks takes 7 arguments");
        return NULL;
    }
    PyObject *blocks = args[0], *block_class = args[1], *known_fourccs = args[2];
    PyObject *encode_metadata = args[3], *hasher = args[6];
    long codec_version = PyLong_AsLong(args[4]);
    Py_ssize_t record_bytes_max = PyLong_AsSsize_t(args[5]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyList_CheckExact(blocks) || !PyDict_CheckExact(known_fourccs) || codec_version < 0
        || codec_version > 255 || record_bytes_max <= 1 || record_bytes_max > PY_SSIZE_T_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "encode_blocks: bad arguments");
        return NULL;
    }
    unsigned char *scratch = PyMem_Malloc((size_t)record_bytes_max);
    if (scratch == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t count = PyList_GET_SIZE(blocks);
    PyObject *result = PyList_New(count);
    if (result == NULL) {
        PyMem_Free(scratch);
        return NULL;
    }
    scratch[0] = (unsigned char)codec_version;
    for (Py_ssize_t at = 0; at < count; at++) {
        PyObject *block = PyList_GET_ITEM(blocks, at);
        int size = 0;
        if ((PyObject *)Py_TYPE(block) == block_class) {
            /* No compression threshold: encode_record defers only what the reference must encode. */
            size = encode_record(block, known_fourccs, encode_metadata, PY_SSIZE_T_MAX, record_bytes_max - 1,
                                 scratch + 1);
        }
        if (size == 0) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(result, at, Py_None);
            continue;
        }
        PyObject *encoded = PyBytes_FromStringAndSize((const char *)scratch, (Py_ssize_t)size + 1);
        PyObject *digest = encoded == NULL ? NULL : hash_bytes(hasher, encoded);
        PyObject *pair = digest == NULL ? NULL : PyTuple_Pack(2, encoded, digest);
        Py_XDECREF(encoded);
        Py_XDECREF(digest);
        if (pair == NULL) {
            Py_DECREF(result);
            PyMem_Free(scratch);
            return NULL;
        }
        PyList_SET_ITEM(result, at, pair);
    }
    PyMem_Free(scratch);
    return result;
}

/* ---- the pack writer (src/maif/storage/packs.py, docs/format/PACKS.md, ADR 0092) ---------------- */

/* The same rule as above: these functions only take inputs they can handle exactly as the Python
 * reference does (exact bytes, lengths within limits, no compression) and hand anything else back
 * (None, or the position of the first item not taken), so packs.py runs its own code on it and raises
 * or writes exactly what it does without this module. Pack layout (little-endian):
 *   frame header  digest(32) flags(1) reserved(3) raw length u32 stored length u32 | check(4)
 *   index entry   digest(32) pack u32 flags(1) reserved(3) offset u64 raw u32 stored u32 | check(8)
 * where a check is the first bytes of BLAKE3 of what precedes it. */

#define FRAME_BODY_BYTES 44
#define FRAME_CHECK_BYTES 4
#define FRAME_HEADER_BYTES (FRAME_BODY_BYTES + FRAME_CHECK_BYTES)
#define ENTRY_BODY_BYTES 56
#define ENTRY_CHECK_BYTES 8
#define ENTRY_BYTES (ENTRY_BODY_BYTES + ENTRY_CHECK_BYTES)
#define U32_MAX 0xffffffffULL

static PyObject *update_name, *reset_name, *copy_name; /* interned */
static PyObject *location_names[5];                    /* pack_id, offset, flags, raw_length, stored_length */
static const char *location_spellings[5] = {"pack_id", "offset", "flags", "raw_length", "stored_length"};

/* One BLAKE3 hasher of the blake3 package, private to one call and reused for every input of it
 * (update, digest, reset: cheaper than a new hasher per input). Private, so that a hasher update that
 * releases the GIL on a large input can never interleave with another thread's. */
typedef struct {
    PyObject *update, *digest, *reset;
} Hasher;

static void
hasher_close(Hasher *hasher)
{
    Py_CLEAR(hasher->update);
    Py_CLEAR(hasher->digest);
    Py_CLEAR(hasher->reset);
}

/* Takes a reference to `state` (a fresh blake3 object): 0, or -1 with an exception. */
static int
hasher_open(Hasher *hasher, PyObject *state)
{
    hasher->update = hasher->digest = hasher->reset = NULL;
    if (state == NULL) {
        return -1;
    }
    hasher->update = PyObject_GetAttr(state, update_name);
    hasher->digest = PyObject_GetAttr(state, digest_name);
    hasher->reset = PyObject_GetAttr(state, reset_name);
    Py_DECREF(state);
    if (hasher->update == NULL || hasher->digest == NULL || hasher->reset == NULL) {
        hasher_close(hasher);
        return -1;
    }
    return 0;
}

/* The 32-byte digest of `data` (any object the hasher's update takes), or NULL with an exception. */
static PyObject *
hasher_digest(Hasher *hasher, PyObject *data)
{
    PyObject *done = PyObject_CallOneArg(hasher->update, data);
    if (done == NULL) {
        return NULL;
    }
    Py_DECREF(done);
    PyObject *digest = PyObject_CallNoArgs(hasher->digest);
    if (digest != NULL && (!PyBytes_CheckExact(digest) || PyBytes_GET_SIZE(digest) != DIGEST_BYTES)) {
        Py_CLEAR(digest);
        PyErr_SetString(PyExc_TypeError, "the hasher's digest() must return 32 bytes");
    }
    if (digest != NULL) {
        done = PyObject_CallNoArgs(hasher->reset);
        if (done == NULL) {
            Py_CLEAR(digest);
        }
        Py_XDECREF(done);
    }
    return digest;
}

/* The first `size` bytes of BLAKE3(scratch) written at `out`: 0, or -1 with an exception. */
static int
write_check(Hasher *hasher, PyObject *scratch, unsigned char *out, size_t size)
{
    PyObject *digest = hasher_digest(hasher, scratch);
    if (digest == NULL) {
        return -1;
    }
    memcpy(out, PyBytes_AS_STRING(digest), size);
    Py_DECREF(digest);
    return 0;
}

/* The items of a list or tuple, held as a tuple (a list is copied: another thread may change it while
 * a hasher releases the GIL). */
typedef struct {
    PyObject *held, **items;
    Py_ssize_t count;
} Items;

/* 1 with the items held; 0 (no exception) when `sequence` is not an exact list or tuple; -1 failed. */
static int
items_take(Items *items, PyObject *sequence)
{
    items->held = NULL;
    if (PyList_CheckExact(sequence)) {
        items->held = PyList_AsTuple(sequence);
    }
    else if (PyTuple_CheckExact(sequence)) {
        Py_INCREF(sequence);
        items->held = sequence;
    }
    else {
        return 0;
    }
    if (items->held == NULL) {
        return -1;
    }
    items->items = ((PyTupleObject *)items->held)->ob_item;
    items->count = PyTuple_GET_SIZE(items->held);
    return 1;
}

static void
items_release(Items *items)
{
    Py_CLEAR(items->held);
}

/* The digests of every item of `pieces` by one private hasher: a list, or None (and no exception) to
 * leave it to the Python path when an item is not exact bytes, is over `bytes_max` or fails to hash. */
static PyObject *
digests_of(PyObject *pieces, PyObject *state, Py_ssize_t bytes_max)
{
    Items pieces_held;
    if (state == NULL || items_take(&pieces_held, pieces) != 1) {
        Py_XDECREF(state);
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject **items = pieces_held.items;
    Py_ssize_t count = pieces_held.count;
    for (Py_ssize_t at = 0; at < count; at++) {
        if (!PyBytes_CheckExact(items[at]) || PyBytes_GET_SIZE(items[at]) > bytes_max) {
            Py_DECREF(state);
            items_release(&pieces_held);
            Py_RETURN_NONE;
        }
    }
    Hasher hasher;
    if (hasher_open(&hasher, state) < 0) {
        items_release(&pieces_held);
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    PyObject *digests = PyList_New(count);
    for (Py_ssize_t at = 0; digests != NULL && at < count; at++) {
        PyObject *digest = hasher_digest(&hasher, items[at]);
        if (digest == NULL) {
            Py_CLEAR(digests);
            break;
        }
        PyList_SET_ITEM(digests, at, digest);
    }
    hasher_close(&hasher);
    items_release(&pieces_held);
    if (digests == NULL) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return digests;
}

PyDoc_STRVAR(pack_digests_doc,
"pack_digests(pieces, hasher, bytes_max) -> list[bytes] | None\n\n"
"The digest of each piece (a list or tuple of exact bytes) by one copy of `hasher`, a blake3 object\n"
"never updated (plain for chunk addresses, derive-key for record addresses), reset between pieces;\n"
"None when a piece is not exact bytes or is over bytes_max: the caller's Python code runs.");

static PyObject *
pack_digests(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "pack_digests takes 3 arguments");
        return NULL;
    }
    Py_ssize_t bytes_max = PyLong_AsSsize_t(args[2]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return digests_of(args[0], PyObject_CallMethodNoArgs(args[1], copy_name), bytes_max);
}

/* A 4-tuple (digest, flags, raw length, stored length) for the staged entries, or NULL. */
static PyObject *
staged_entry(PyObject *digest, unsigned flags, Py_ssize_t length)
{
    PyObject *entry = PyTuple_New(4);
    PyObject *flags_number = PyLong_FromLong((long)flags);
    PyObject *raw = PyLong_FromSsize_t(length);
    if (entry == NULL || flags_number == NULL || raw == NULL) {
        Py_XDECREF(entry);
        Py_XDECREF(flags_number);
        Py_XDECREF(raw);
        return NULL;
    }
    Py_INCREF(digest);
    Py_INCREF(raw);
    PyTuple_SET_ITEM(entry, 0, digest);
    PyTuple_SET_ITEM(entry, 1, flags_number);
    PyTuple_SET_ITEM(entry, 2, raw);
    PyTuple_SET_ITEM(entry, 3, raw); /* stored as is: stored length = raw length */
    return entry;
}

PyDoc_STRVAR(pack_stage_frames_doc,
"pack_stage_frames(digests, pieces, first, frames, entries, extra_flags, compression_threshold,\n"
"                  staged_bytes_max, pack_room, hasher) -> (next, stored_bytes)\n\n"
"Appends the frames of pieces[first:] (each under digests[i], stored as is, flags extra_flags) to\n"
"the bytearray `frames` and (digest, flags, raw length, stored length) to the list `entries`, as\n"
"packs.py's _stage_frames does, while each piece is exact bytes whose digest is 32 exact bytes and\n"
"that needs no compression (shorter than compression_threshold, or empty). Returns the index of the\n"
"first piece not staged and the bytes staged; stops after a frame once len(frames) reaches\n"
"staged_bytes_max or pack_room (the caller writes them), or before a piece it does not take (the\n"
"caller stages that one).");

static PyObject *
pack_stage_frames(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "pack_stage_frames takes 10 arguments");
        return NULL;
    }
    PyObject *frames = args[3], *entries = args[4];
    Py_ssize_t first = PyLong_AsSsize_t(args[2]);
    long extra_flags = PyLong_AsLong(args[5]);
    Py_ssize_t threshold = PyLong_AsSsize_t(args[6]), staged_max = PyLong_AsSsize_t(args[7]);
    Py_ssize_t pack_room = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    Items pieces_held = {NULL, NULL, 0}, digests_held = {NULL, NULL, 0};
    int taken = items_take(&pieces_held, args[1]);
    if (taken == 1) {
        taken = items_take(&digests_held, args[0]);
    }
    if (taken != 1 || digests_held.count != pieces_held.count || first < 0
        || !PyByteArray_CheckExact(frames) || !PyList_CheckExact(entries) || extra_flags < 0
        || extra_flags > 0xff) {
        items_release(&pieces_held);
        items_release(&digests_held);
        if (taken >= 0) {
            PyErr_SetString(PyExc_ValueError, "pack_stage_frames: bad arguments");
        }
        return NULL;
    }
    PyObject **pieces = pieces_held.items, **digests = digests_held.items;
    Py_ssize_t count = pieces_held.count;
    Hasher hasher;
    PyObject *scratch = NULL;
    if (hasher_open(&hasher, PyObject_CallNoArgs(args[9])) < 0
        || (scratch = PyByteArray_FromStringAndSize(NULL, FRAME_BODY_BYTES)) == NULL) {
        hasher_close(&hasher);
        items_release(&pieces_held);
        items_release(&digests_held);
        return NULL;
    }
    unsigned char *body = (unsigned char *)PyByteArray_AS_STRING(scratch);
    Py_ssize_t at = first, stored_bytes = 0;
    int failed = 0;
    for (; at < count; at++) {
        PyObject *digest = digests[at], *piece = pieces[at];
        if (!PyBytes_CheckExact(piece) || !PyBytes_CheckExact(digest)
            || PyBytes_GET_SIZE(digest) != DIGEST_BYTES) {
            break;
        }
        Py_ssize_t length = PyBytes_GET_SIZE(piece);
        if ((length >= threshold && length > 0) || (uint64_t)length > U32_MAX) {
            break; /* compression might pay: the Python path decides */
        }
        memcpy(body, PyBytes_AS_STRING(digest), DIGEST_BYTES);
        body[32] = (unsigned char)extra_flags;
        body[33] = body[34] = body[35] = 0;
        write_le(body + 36, (uint64_t)length, 4);
        write_le(body + 40, (uint64_t)length, 4);
        Py_ssize_t before = PyByteArray_GET_SIZE(frames);
        if (length > PY_SSIZE_T_MAX - FRAME_HEADER_BYTES - before
            || PyByteArray_Resize(frames, before + FRAME_HEADER_BYTES + length) < 0) {
            if (!PyErr_Occurred()) {
                PyErr_NoMemory();
            }
            failed = 1;
            break;
        }
        unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(frames) + before;
        PyObject *entry = NULL;
        if (write_check(&hasher, scratch, out + FRAME_BODY_BYTES, FRAME_CHECK_BYTES) < 0
            || (entry = staged_entry(digest, (unsigned)extra_flags, length)) == NULL
            || PyList_Append(entries, entry) < 0) {
            Py_XDECREF(entry);
            if (PyByteArray_Resize(frames, before) < 0) { /* shrinking: cannot fail but for a view */
                PyErr_Clear();
            }
            failed = 1;
            break;
        }
        Py_DECREF(entry);
        out = (unsigned char *)PyByteArray_AS_STRING(frames) + before;
        memcpy(out, body, FRAME_BODY_BYTES);
        memcpy(out + FRAME_HEADER_BYTES, PyBytes_AS_STRING(piece), (size_t)length);
        stored_bytes += length;
        Py_ssize_t staged = PyByteArray_GET_SIZE(frames);
        if (staged >= staged_max || staged >= pack_room) {
            at++;
            break;
        }
    }
    Py_DECREF(scratch);
    hasher_close(&hasher);
    items_release(&pieces_held);
    items_release(&digests_held);
    if (failed) {
        return NULL;
    }
    return Py_BuildValue("(nn)", at, stored_bytes);
}

/* The 56-byte body of an index entry (each field already checked to fit its width). */
static void
entry_body(unsigned char *body, PyObject *digest, unsigned long long pack_id, unsigned long long offset,
           unsigned long long flags, unsigned long long raw, unsigned long long stored)
{
    memcpy(body, PyBytes_AS_STRING(digest), DIGEST_BYTES);
    write_le(body + 32, pack_id, 4);
    body[36] = (unsigned char)flags;
    body[37] = body[38] = body[39] = 0;
    write_le(body + 40, offset, 8);
    write_le(body + 48, raw, 4);
    write_le(body + 52, stored, 4);
}

/* An exact int attribute of `object` within [0, maximum] into *value: 1, or 0 (no exception) if not. */
static int
attribute_within(PyObject *object, PyObject *name, unsigned long long maximum, unsigned long long *value)
{
    PyObject *number = PyObject_GetAttr(object, name);
    int ok = number != NULL && PyLong_CheckExact(number);
    if (ok) {
        *value = PyLong_AsUnsignedLongLong(number);
        ok = !PyErr_Occurred() && *value <= maximum;
    }
    Py_XDECREF(number);
    PyErr_Clear();
    return ok;
}

/* Whether a located frame can exist (packs.py's _is_present): its pack is remote, or local and at least
 * as long as the frame's end. 1 or 0; -1 when the location is not exactly what packs.py builds. */
static int
is_present(PyObject *location, PyObject *remote, PyObject *pack_sizes)
{
    unsigned long long offset, stored;
    PyObject *pack_id = PyObject_GetAttr(location, location_names[0]);
    if (pack_id == NULL || !PyLong_CheckExact(pack_id)
        || !attribute_within(location, location_names[1], UINT64_MAX / 4, &offset)
        || !attribute_within(location, location_names[4], U32_MAX, &stored)) {
        Py_XDECREF(pack_id);
        PyErr_Clear();
        return -1;
    }
    int present = PySet_Contains(remote, pack_id);
    if (present == 0) {
        PyObject *size = PyDict_GetItemWithError(pack_sizes, pack_id);
        unsigned long long bytes = 0;
        if (size == NULL) {
            present = PyErr_Occurred() ? -1 : 0;
        }
        else if (!PyLong_CheckExact(size)) {
            present = -1;
        }
        else {
            bytes = PyLong_AsUnsignedLongLong(size);
            present = PyErr_Occurred() ? -1 : offset + FRAME_HEADER_BYTES + stored <= bytes;
        }
    }
    Py_DECREF(pack_id);
    PyErr_Clear();
    return present;
}

PyDoc_STRVAR(pack_fresh_chunks_doc,
"pack_fresh_chunks(digests, pieces, locations, staged_digests, remote, pack_sizes)\n"
"    -> (fresh_digests, fresh_pieces, offered_bytes, dedup_hits) | None\n\n"
"packs.py's _put_checked loop: the pieces (exact bytes, under digests[i], 32-byte exact bytes) that\n"
"are neither staged already (the set staged_digests, to which each fresh digest is added) nor located\n"
"(the dict `locations`) in a frame that can exist (its pack in the set `remote`, or local in\n"
"`pack_sizes` and long enough), with the bytes offered and the duplicates met. None, before anything\n"
"is done, when an argument or item is not exactly that: the caller's Python code runs.");

static PyObject *
pack_fresh_chunks(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "pack_fresh_chunks takes 6 arguments");
        return NULL;
    }
    PyObject *locations = args[2], *staged = args[3], *remote = args[4], *pack_sizes = args[5];
    Items pieces_held = {NULL, NULL, 0}, digests_held = {NULL, NULL, 0};
    int taken = items_take(&pieces_held, args[1]);
    if (taken == 1) {
        taken = items_take(&digests_held, args[0]);
    }
    int usable = taken == 1 && digests_held.count == pieces_held.count && PyDict_CheckExact(locations)
                 && PySet_CheckExact(staged) && PySet_CheckExact(remote) && PyDict_CheckExact(pack_sizes);
    PyObject **pieces = pieces_held.items, **digests = digests_held.items;
    Py_ssize_t count = pieces_held.count;
    for (Py_ssize_t at = 0; usable && at < count; at++) {
        usable = PyBytes_CheckExact(pieces[at]) && PyBytes_CheckExact(digests[at])
                 && PyBytes_GET_SIZE(digests[at]) == DIGEST_BYTES;
    }
    /* Decide every piece first, then change `staged`: a deferral leaves nothing half done. */
    char *fresh = usable ? PyMem_Malloc(count ? (size_t)count : 1) : NULL;
    if (fresh == NULL) {
        items_release(&pieces_held);
        items_release(&digests_held);
        if (taken < 0 || usable) {
            return usable ? PyErr_NoMemory() : NULL;
        }
        Py_RETURN_NONE;
    }
    PyObject *seen = PySet_New(NULL);
    Py_ssize_t offered = 0, hits = 0, fresh_count = 0;
    int outcome = seen == NULL ? -1 : 1; /* 1 decided, 0 deferred, -1 failed */
    for (Py_ssize_t at = 0; outcome == 1 && at < count; at++) {
        PyObject *digest = digests[at];
        offered += PyBytes_GET_SIZE(pieces[at]);
        int duplicate = PySet_Contains(staged, digest);
        if (duplicate == 0) {
            duplicate = PySet_Contains(seen, digest);
        }
        if (duplicate == 0) {
            PyObject *existing = PyDict_GetItemWithError(locations, digest);
            if (existing != NULL) {
                Py_INCREF(existing);
                duplicate = is_present(existing, remote, pack_sizes);
                Py_DECREF(existing);
                if (duplicate < 0) {
                    outcome = 0;
                    break;
                }
            }
            else if (PyErr_Occurred()) {
                duplicate = -1;
            }
        }
        if (duplicate < 0) {
            outcome = -1;
            break;
        }
        fresh[at] = (char)!duplicate;
        if (duplicate) {
            hits++;
        }
        else if (PySet_Add(seen, digest) < 0) {
            outcome = -1;
        }
        else {
            fresh_count++;
        }
    }
    Py_XDECREF(seen);
    PyObject *fresh_digests = NULL, *fresh_pieces = NULL, *result = NULL;
    if (outcome == 1) {
        fresh_digests = PyList_New(fresh_count);
        fresh_pieces = PyList_New(fresh_count);
    }
    if (fresh_digests != NULL && fresh_pieces != NULL) {
        Py_ssize_t taken = 0;
        for (Py_ssize_t at = 0; at < count; at++) {
            if (!fresh[at]) {
                continue;
            }
            Py_INCREF(digests[at]);
            Py_INCREF(pieces[at]);
            PyList_SET_ITEM(fresh_digests, taken, digests[at]);
            PyList_SET_ITEM(fresh_pieces, taken, pieces[at]);
            taken++;
        }
        int added = 0;
        for (Py_ssize_t at = 0; added == 0 && at < fresh_count; at++) {
            added = PySet_Add(staged, PyList_GET_ITEM(fresh_digests, at));
        }
        if (added == 0) {
            result = Py_BuildValue("(OOnn)", fresh_digests, fresh_pieces, offered, hits);
        }
    }
    PyMem_Free(fresh);
    Py_XDECREF(fresh_digests);
    Py_XDECREF(fresh_pieces);
    items_release(&pieces_held);
    items_release(&digests_held);
    if (outcome == 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return result;
}

PyDoc_STRVAR(pack_encode_entries_doc,
"pack_encode_entries(entries, hasher) -> bytes | None\n\n"
"The 64-byte pack index entries of a list of (digest, ChunkLocation), each with its 8-byte check, as\n"
"packs.py's _encode_entries writes them; None when an item is not exactly that (a 32-byte exact\n"
"bytes digest, exact int fields within their widths): the caller's Python code runs.");

static PyObject *
pack_encode_entries(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pack_encode_entries takes 2 arguments");
        return NULL;
    }
    if (!PyList_CheckExact(args[0])) {
        Py_RETURN_NONE;
    }
    PyObject *entries = args[0];
    Py_ssize_t count = PyList_GET_SIZE(entries);
    if (count > PY_SSIZE_T_MAX / ENTRY_BYTES) {
        Py_RETURN_NONE;
    }
    PyObject *output = PyBytes_FromStringAndSize(NULL, count * ENTRY_BYTES);
    entries = PyList_AsTuple(entries); /* the items stay put whatever an attribute getter does */
    PyObject *scratch = PyByteArray_FromStringAndSize(NULL, ENTRY_BODY_BYTES);
    Hasher hasher = {NULL, NULL, NULL};
    if (output == NULL || entries == NULL || scratch == NULL
        || hasher_open(&hasher, PyObject_CallNoArgs(args[1])) < 0) {
        Py_XDECREF(output);
        Py_XDECREF(entries);
        Py_XDECREF(scratch);
        return NULL;
    }
    static const unsigned long long widths[5] = {U32_MAX, UINT64_MAX, 0xff, U32_MAX, U32_MAX};
    unsigned char *body = (unsigned char *)PyByteArray_AS_STRING(scratch);
    int outcome = 1; /* 1 encoded, 0 deferred, -1 failed */
    for (Py_ssize_t at = 0; outcome == 1 && at < count; at++) {
        PyObject *item = PyTuple_GET_ITEM(entries, at);
        if (!PyTuple_CheckExact(item) || PyTuple_GET_SIZE(item) != 2
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(item, 0))
            || PyBytes_GET_SIZE(PyTuple_GET_ITEM(item, 0)) != DIGEST_BYTES) {
            outcome = 0;
            break;
        }
        unsigned long long fields[5];
        for (int which = 0; which < 5 && outcome == 1; which++) {
            if (!attribute_within(PyTuple_GET_ITEM(item, 1), location_names[which], widths[which],
                                  &fields[which])) {
                outcome = 0;
            }
        }
        if (outcome != 1) {
            break;
        }
        entry_body(body, PyTuple_GET_ITEM(item, 0), fields[0], fields[1], fields[2], fields[3], fields[4]);
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(output) + at * ENTRY_BYTES;
        memcpy(out, body, ENTRY_BODY_BYTES);
        if (write_check(&hasher, scratch, out + ENTRY_BODY_BYTES, ENTRY_CHECK_BYTES) < 0) {
            outcome = -1;
        }
    }
    Py_DECREF(entries);
    Py_DECREF(scratch);
    hasher_close(&hasher);
    if (outcome != 1) {
        Py_DECREF(output);
        if (outcome == 0) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    return output;
}

PyDoc_STRVAR(pack_locate_doc,
"pack_locate(entries, pack_id, offset, location_class, unindexed, locations, record_flag, hasher)\n"
"    -> (end, records, raw_bytes_change, stored_bytes_change) | None\n\n"
"packs.py's _locate_staged over the staged entries (digest, flags, raw length, stored length) of\n"
"frames written at `offset` of pack `pack_id`: appends each frame's 64-byte index entry (with its\n"
"check) to the bytearray `unindexed` and, for a frame without record_flag, sets locations[digest]\n"
"(the dict of chunk locations) to location_class(pack_id, offset, flags, raw, stored). Returns the\n"
"end of the last frame, the number of record frames and the changes of the raw and stored byte\n"
"counters (a replaced location no longer counts). None, before anything is done, when an entry is\n"
"not exactly such a 4-tuple (a 32-byte exact bytes digest, exact ints within their widths).");

static PyObject *
pack_locate(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "pack_locate takes 8 arguments");
        return NULL;
    }
    PyObject *entries = args[0], *pack_id = args[1], *location_class = args[3];
    PyObject *unindexed = args[4], *locations = args[5];
    unsigned long long offset = PyLong_AsUnsignedLongLong(args[2]);
    unsigned long long pack_number = PyLong_AsUnsignedLongLong(pack_id);
    long record_flag = PyLong_AsLong(args[6]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (!PyList_CheckExact(entries) || !PyByteArray_CheckExact(unindexed) || !PyDict_CheckExact(locations)
        || !PyLong_CheckExact(pack_id) || pack_number > U32_MAX || offset > UINT64_MAX / 2) {
        PyErr_SetString(PyExc_ValueError, "pack_locate: bad arguments");
        return NULL;
    }
    entries = PyList_AsTuple(entries); /* the entries stay put whatever location_class does */
    if (entries == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(entries);
    static const unsigned long long widths[4] = {0, 0xff, U32_MAX, U32_MAX};
    for (Py_ssize_t at = 0; at < count; at++) {
        PyObject *entry = PyTuple_GET_ITEM(entries, at);
        int usable = PyTuple_CheckExact(entry) && PyTuple_GET_SIZE(entry) == 4
                     && PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 0))
                     && PyBytes_GET_SIZE(PyTuple_GET_ITEM(entry, 0)) == DIGEST_BYTES;
        for (int field = 1; usable && field < 4; field++) {
            PyObject *number = PyTuple_GET_ITEM(entry, field);
            usable = PyLong_CheckExact(number) && PyLong_AsUnsignedLongLong(number) <= widths[field]
                     && !PyErr_Occurred();
        }
        if (!usable) {
            PyErr_Clear();
            Py_DECREF(entries);
            Py_RETURN_NONE;
        }
    }
    Hasher hasher;
    PyObject *scratch = NULL;
    Py_ssize_t before = PyByteArray_GET_SIZE(unindexed), done = 0; /* done: entries a failure keeps */
    if (count > (PY_SSIZE_T_MAX - before) / ENTRY_BYTES
        || hasher_open(&hasher, PyObject_CallNoArgs(args[7])) < 0) {
        Py_DECREF(entries);
        return PyErr_Occurred() ? NULL : PyErr_NoMemory();
    }
    if ((scratch = PyByteArray_FromStringAndSize(NULL, ENTRY_BODY_BYTES)) == NULL
        || PyByteArray_Resize(unindexed, before + count * ENTRY_BYTES) < 0) {
        goto failed;
    }
    unsigned char *body = (unsigned char *)PyByteArray_AS_STRING(scratch);
    long long records = 0, raw_change = 0, stored_change = 0;
    for (Py_ssize_t at = 0; at < count; at++, done = at) {
        PyObject *entry = PyTuple_GET_ITEM(entries, at);
        PyObject *digest = PyTuple_GET_ITEM(entry, 0);
        long flags = PyLong_AsLong(PyTuple_GET_ITEM(entry, 1));
        unsigned long long raw = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 2));
        unsigned long long stored = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(entry, 3));
        entry_body(body, digest, pack_number, offset, (unsigned long long)flags, raw, stored);
        unsigned char *out = (unsigned char *)PyByteArray_AS_STRING(unindexed) + before + at * ENTRY_BYTES;
        memcpy(out, body, ENTRY_BODY_BYTES);
        if (write_check(&hasher, scratch, out + ENTRY_BODY_BYTES, ENTRY_CHECK_BYTES) < 0) {
            goto failed;
        }
        if (flags & record_flag) { /* a block record is counted, never kept in memory */
            records++;
            offset += FRAME_HEADER_BYTES + stored;
            continue;
        }
        PyObject *offset_number = PyLong_FromUnsignedLongLong(offset);
        if (offset_number == NULL) {
            goto failed;
        }
        PyObject *call[5] = {pack_id, offset_number, PyTuple_GET_ITEM(entry, 1), PyTuple_GET_ITEM(entry, 2),
                             PyTuple_GET_ITEM(entry, 3)};
        PyObject *location = PyObject_Vectorcall(location_class, call, 5, NULL);
        Py_DECREF(offset_number);
        if (location == NULL) {
            goto failed;
        }
        offset += FRAME_HEADER_BYTES + stored;
        PyObject *previous = PyDict_GetItemWithError(locations, digest);
        if (previous == NULL && PyErr_Occurred()) {
            Py_DECREF(location);
            goto failed;
        }
        if (previous != NULL) {
            unsigned long long previous_raw, previous_stored;
            Py_INCREF(previous);
            int read = attribute_within(previous, location_names[3], UINT64_MAX / 4, &previous_raw)
                       && attribute_within(previous, location_names[4], UINT64_MAX / 4, &previous_stored);
            Py_DECREF(previous);
            if (!read) {
                PyErr_SetString(PyExc_TypeError, "pack_locate: a located chunk has no lengths");
                Py_DECREF(location);
                goto failed;
            }
            raw_change -= (long long)previous_raw;
            stored_change -= (long long)previous_stored;
        }
        int set = PyDict_SetItem(locations, digest, location);
        Py_DECREF(location);
        if (set < 0) {
            goto failed;
        }
        raw_change += (long long)raw;
        stored_change += (long long)stored;
    }
    Py_DECREF(scratch);
    hasher_close(&hasher);
    Py_DECREF(entries);
    return Py_BuildValue("(KLLL)", offset, records, raw_change, stored_change);
failed:
    if (PyByteArray_GET_SIZE(unindexed) > before + done * ENTRY_BYTES) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (PyByteArray_Resize(unindexed, before + done * ENTRY_BYTES) < 0) {
            PyErr_Clear();
        }
        PyErr_Restore(type, value, traceback);
    }
    Py_XDECREF(scratch);
    hasher_close(&hasher);
    Py_DECREF(entries);
    return NULL;
}

/* ---- module ------------------------------------------------------------------------------------ */

PyDoc_STRVAR(set_limits_doc,
"set_limits(payload_bytes_max, id_bytes_max, agent_id_bytes_max, version_bytes_max, parents_max,\n"
"           metadata_bytes_max)\n\n"
"The maif.limits bounds the record rules use; nothing is proven before they are set.");

static PyObject *
set_limits(PyObject *module, PyObject *args)
{
    unsigned long long payload, id, agent, version, parents, metadata;
    if (!PyArg_ParseTuple(args, "KKKKKK", &payload, &id, &agent, &version, &parents, &metadata)) {
        return NULL;
    }
    limits.payload_bytes_max = payload;
    limits.id_bytes_max = id;
    limits.agent_id_bytes_max = agent;
    limits.version_bytes_max = version;
    limits.parents_max = parents;
    limits.metadata_bytes_max = metadata;
    limits.set = 1;
    Py_RETURN_NONE;
}

static PyMethodDef core_methods[] = {
    {"set_limits", set_limits, METH_VARARGS, set_limits_doc},
    {"unproven_records", (PyCFunction)(void (*)(void))unproven_records, METH_FASTCALL, unproven_records_doc},
    {"chain_mismatches", (PyCFunction)(void (*)(void))chain_mismatches, METH_FASTCALL, chain_mismatches_doc},
    {"leaf_hashes", (PyCFunction)(void (*)(void))leaf_hashes, METH_FASTCALL, leaf_hashes_doc},
    {"merkle_root", (PyCFunction)(void (*)(void))merkle_root, METH_FASTCALL, merkle_root_doc},
    {"encode_records", (PyCFunction)(void (*)(void))encode_records, METH_FASTCALL, encode_records_doc},
    {"encode_blocks", (PyCFunction)(void (*)(void))encode_blocks, METH_FASTCALL, encode_blocks_doc},
    {"pack_digests", (PyCFunction)(void (*)(void))pack_digests, METH_FASTCALL, pack_digests_doc},
    {"pack_stage_frames", (PyCFunction)(void (*)(void))pack_stage_frames, METH_FASTCALL, pack_stage_frames_doc},
    {"pack_encode_entries", (PyCFunction)(void (*)(void))pack_encode_entries, METH_FASTCALL,
     pack_encode_entries_doc},
    {"pack_fresh_chunks", (PyCFunction)(void (*)(void))pack_fresh_chunks, METH_FASTCALL,
     pack_fresh_chunks_doc},
    {"pack_locate", (PyCFunction)(void (*)(void))pack_locate, METH_FASTCALL, pack_locate_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "maif.format._core",
    .m_doc = "The compiled core of the .maif container: proves records valid or defers to Python (ADR 0090).",
    .m_size = -1,
    .m_methods = core_methods,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    digest_name = PyUnicode_InternFromString("digest");
    if (digest_name == NULL) {
        return NULL;
    }
    for (int which = 0; which < 8; which++) {
        attribute_names[which] = PyUnicode_InternFromString(attribute_spellings[which]);
        if (attribute_names[which] == NULL) {
            return NULL;
        }
    }
    for (int which = 0; which < 5; which++) {
        location_names[which] = PyUnicode_InternFromString(location_spellings[which]);
        if (location_names[which] == NULL) {
            return NULL;
        }
    }
    update_name = PyUnicode_InternFromString("update");
    reset_name = PyUnicode_InternFromString("reset");
    copy_name = PyUnicode_InternFromString("copy");
    if (update_name == NULL || reset_name == NULL || copy_name == NULL) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&core_module);
    if (module == NULL) {
        return NULL;
    }
    /* The interface version native.py requires: bump both whenever a function is added, renamed, or
       changes its arguments or meaning, so a stale build left in a source tree is never used. */
    if (PyModule_AddIntConstant(module, "ABI", MAIF_CORE_ABI) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
