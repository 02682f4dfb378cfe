/* Unit tests for the pure parts of the transaction runner (shared/tq_db: when a failed try
 * is tried again) and of the consumer's claim (cdb: the outcome names of
 * db/procedures/60_claim.sql). The runner against a real Postgres is tests/db_it.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cdb.h"
#include "tq_db.h"

static void soft_errors_are_retried_whatever_the_connection(void **state)
{
    (void)state;
    const tq_db_txn borrowed = {0}, owned = {.url = "postgresql:///x"};
    int stale = 1;
    assert_true(tq_db_txn_retry(&borrowed, TQ_ERR_DB_RETRY, 1, 0, &stale));
    assert_true(tq_db_txn_retry(&owned, TQ_ERR_DB_RETRY, 1, 1, &stale));
    assert_int_equal(stale, 1); /* a soft error does not use up the stale retry */
}

static void other_errors_are_never_retried(void **state)
{
    (void)state;
    const tq_db_txn owned = {.url = "postgresql:///x", .retry_unavailable = 1};
    const int hard[] = {TQ_ERR_DB,       TQ_ERR_CONFLICT, TQ_ERR_LIMIT,
                        TQ_ERR_INTERNAL, TQ_ERR_NOMEM,    TQ_ERR_INVALID};
    for (size_t i = 0; i < sizeof hard / sizeof hard[0]; i++) {
        int stale = 1;
        assert_false(tq_db_txn_retry(&owned, hard[i], 0, 0, &stale));
    }
}

static void a_connection_found_dead_at_begin_is_retried_once(void **state)
{
    (void)state;
    const tq_db_txn owned = {.url = "postgresql:///x"};
    int stale = 1;
    /* BEGIN failed on a connection this call did not open: nothing ran, try once more */
    assert_true(tq_db_txn_retry(&owned, TQ_ERR_UNAVAILABLE, 0, 0, &stale));
    assert_int_equal(stale, 0);
    assert_false(tq_db_txn_retry(&owned, TQ_ERR_UNAVAILABLE, 0, 0, &stale));
    /* part of the transaction may have run: not repeated */
    stale = 1;
    assert_false(tq_db_txn_retry(&owned, TQ_ERR_UNAVAILABLE, 1, 0, &stale));
    /* the connection was opened by this try: the server is away, not our idle session */
    assert_false(tq_db_txn_retry(&owned, TQ_ERR_UNAVAILABLE, 0, 1, &stale));
    assert_int_equal(stale, 1);
}

static void a_borrowed_connection_is_left_to_its_owner(void **state)
{
    (void)state;
    const tq_db_txn borrowed = {.retry_unavailable = 1};
    int stale = 1;
    assert_false(tq_db_txn_retry(&borrowed, TQ_ERR_UNAVAILABLE, 0, 0, &stale));
}

static void retry_unavailable_retries_every_lost_connection(void **state)
{
    (void)state;
    const tq_db_txn claim = {.url = "postgresql:///x", .retry_unavailable = 1, .implicit = 1};
    int stale = 0;
    assert_true(tq_db_txn_retry(&claim, TQ_ERR_UNAVAILABLE, 1, 0, &stale));
    assert_true(tq_db_txn_retry(&claim, TQ_ERR_UNAVAILABLE, 0, 1, &stale));
}

static void claim_outcomes_are_parsed_by_their_procedure_names(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        tq_claim_outcome want;
    } cases[] = {
        {"claimed", TQ_CLAIM_CLAIMED},
        {"failed", TQ_CLAIM_FAILED},
        {"none", TQ_CLAIM_NONE},
        {"busy", TQ_CLAIM_BUSY},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tq_claim_outcome o = (tq_claim_outcome)-1;
        assert_int_equal(tq_claim_outcome_parse(cases[i].name, &o), TQ_OK);
        assert_int_equal(o, cases[i].want);
    }
    const char *bad[] = {"", "Claimed", "claimed ", "parked", NULL};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        tq_claim_outcome o = TQ_CLAIM_NONE;
        assert_int_equal(tq_claim_outcome_parse(bad[i], &o), TQ_ERR_INVALID);
        assert_int_equal(o, TQ_CLAIM_NONE); /* untouched */
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(soft_errors_are_retried_whatever_the_connection),
        cmocka_unit_test(other_errors_are_never_retried),
        cmocka_unit_test(a_connection_found_dead_at_begin_is_retried_once),
        cmocka_unit_test(a_borrowed_connection_is_left_to_its_owner),
        cmocka_unit_test(retry_unavailable_retries_every_lost_connection),
        cmocka_unit_test(claim_outcomes_are_parsed_by_their_procedure_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
