/*
 * fuzz_submission — tq_submission_parse (the POST /api/training/submit body) and
 * tq_submission_to_json.
 *
 * Properties checked on every input (abort = libFuzzer crash):
 *   - the report is consistent with the return code and is clean text (tq_job.h);
 *   - the result does not depend on whether a report was asked for (v == NULL);
 *   - an accepted submission obeys every rule of tq_job.h;
 *   - round trip: to_json -> dump -> parse succeeds and gives the same submission, the
 *     learning rate bit for bit, and dumping that again gives identical bytes;
 *   - tq_submission_from_json on the canonical object agrees with tq_submission_parse.
 */
#include "fuzz_util.h"

#include "tq_err.h"
#include "tq_job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    tq_submission s, s2, s3;
    tq_validation v;

    int rc = tq_submission_parse(buf, size, &s, &v);
    FUZZ_CHECK(rc == TQ_OK || rc == TQ_ERR_INVALID || rc == TQ_ERR_TOO_LARGE, "rc=%d", rc);
    fuzz_check_validation(&v, rc);
    if (size > TQ_SUBMISSION_MAX_BYTES)
        FUZZ_CHECK(rc == TQ_ERR_TOO_LARGE, "oversize body gave rc=%d", rc);

    int rc_quiet = tq_submission_parse(buf, size, &s2, NULL);
    FUZZ_CHECK(rc_quiet == rc, "rc=%d with a report, %d without", rc, rc_quiet);
    tq_submission_free(&s2);

    if (rc != TQ_OK) {
        tq_submission_free(&s); /* documented as safe */
        return 0;
    }
    fuzz_check_submission(&s);

    json_t *j = tq_submission_to_json(&s);
    FUZZ_CHECK(j != NULL, "to_json failed on a parsed submission");
    char *d1 = json_dumps(j, JSON_COMPACT);
    FUZZ_CHECK(d1 != NULL, "json_dumps failed");

    rc = tq_submission_parse(d1, strlen(d1), &s2, &v);
    FUZZ_CHECK(rc == TQ_OK, "re-parse of %s failed: %s: %s", d1, v.n ? v.items[0].field : "",
               v.n ? v.items[0].message : "");
    FUZZ_CHECK(fuzz_submission_equal(&s, &s2), "round trip changed the submission: %s", d1);

    json_t *j2 = tq_submission_to_json(&s2);
    FUZZ_CHECK(j2 != NULL, "to_json failed on the re-parsed submission");
    char *d2 = json_dumps(j2, JSON_COMPACT);
    FUZZ_CHECK(d2 != NULL && strcmp(d1, d2) == 0, "not canonical:\n  %s\n  %s", d1,
               d2 ? d2 : "(null)");

    rc = tq_submission_from_json(j, &s3, &v);
    FUZZ_CHECK(rc == TQ_OK && fuzz_submission_equal(&s, &s3), "from_json disagrees (rc=%d)", rc);

    tq_submission_free(&s3);
    free(d2);
    json_decref(j2);
    tq_submission_free(&s2);
    free(d1);
    json_decref(j);
    tq_submission_free(&s);
    tq_submission_free(&s); /* safe to call twice */
    return 0;
}
