/*
 * fuzz_message — tq_msg_decode (an AMQP `trainq.job.v1` body from any publisher) and the
 * canonical encoder tq_msg_encode.
 *
 * Properties (tq_msg.h, "What must stay true"):
 *   - the report is consistent with the return code and is clean text;
 *   - a decoded message has a lowercase job_id, a valid user_id, an empty or RFC 3339
 *     submitted_at, and a submission that obeys tq_job.h;
 *   - encode never fails on a decoded message (consumers accept what we publish);
 *   - decode(encode(m)) == m, the learning rate bit for bit;
 *   - encode is canonical: encode(decode(encode(m))) == encode(m), byte for byte.
 */
#include "fuzz_util.h"

#include "tq_err.h"
#include "tq_msg.h"

static int msg_equal(const tq_job_msg *a, const tq_job_msg *b)
{
    return strcmp(a->job_id, b->job_id) == 0 && strcmp(a->user_id, b->user_id) == 0 &&
           strcmp(a->submitted_at, b->submitted_at) == 0 && fuzz_submission_equal(&a->sub, &b->sub);
}

static void check_msg(const tq_job_msg *m)
{
    FUZZ_CHECK(FUZZ_TERMINATED(m->job_id) && strlen(m->job_id) == 36, "job_id");
    for (size_t i = 0; i < 36; i++)
        FUZZ_CHECK(!(m->job_id[i] >= 'A' && m->job_id[i] <= 'Z'), "job_id not lowercase: %s",
                   m->job_id);
    FUZZ_CHECK(m->user_id && tq_user_id_valid(m->user_id, strlen(m->user_id)), "user_id");
    FUZZ_CHECK(FUZZ_TERMINATED(m->submitted_at), "submitted_at");
    FUZZ_CHECK(m->submitted_at[0] == '\0' || tq_rfc3339_valid(m->submitted_at), "submitted_at %s",
               m->submitted_at);
    fuzz_check_submission(&m->sub);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tq_job_msg m, m2;
    tq_validation v;

    int rc = tq_msg_decode((const char *)data, size, &m, &v);
    FUZZ_CHECK(rc == TQ_OK || rc == TQ_ERR_INVALID || rc == TQ_ERR_TOO_LARGE, "rc=%d", rc);
    fuzz_check_validation(&v, rc);
    if (size > TQ_MSG_MAX_BYTES)
        FUZZ_CHECK(rc == TQ_ERR_TOO_LARGE, "oversize body gave rc=%d", rc);

    int rc_quiet = tq_msg_decode((const char *)data, size, &m2, NULL);
    FUZZ_CHECK(rc_quiet == rc, "rc=%d with a report, %d without", rc, rc_quiet);
    tq_msg_free(&m2);

    if (rc != TQ_OK) {
        tq_msg_free(&m);
        return 0;
    }
    check_msg(&m);

    char *e1 = tq_msg_encode(&m);
    FUZZ_CHECK(e1 != NULL, "encode refused a decoded message");
    rc = tq_msg_decode(e1, strlen(e1), &m2, &v);
    FUZZ_CHECK(rc == TQ_OK, "decode of our own encoding failed: %s: %s\n  %s",
               v.n ? v.items[0].field : "", v.n ? v.items[0].message : "", e1);
    FUZZ_CHECK(msg_equal(&m, &m2), "decode(encode(m)) != m: %s", e1);
    char *e2 = tq_msg_encode(&m2);
    FUZZ_CHECK(e2 != NULL && strcmp(e1, e2) == 0, "encoding not canonical:\n  %s\n  %s", e1,
               e2 ? e2 : "(null)");

    free(e2);
    free(e1);
    tq_msg_free(&m2);
    tq_msg_free(&m);
    tq_msg_free(&m); /* safe to call twice */
    return 0;
}
