/* Unit tests for the listing of a finished job's output files (consumer/artifacts.h), on a
 * temporary directory: regular files only, links never followed, names relative, sorted,
 * sha256 of the content, bounded in number. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "artifacts.h"

static char root[256];

static void put(const char *rel, const char *content)
{
    char p[512];
    snprintf(p, sizeof p, "%s/%s", root, rel);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(root, sizeof root, "/tmp/tq-artifacts-XXXXXX");
    return mkdtemp(root) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
    return system(cmd) == 0 ? 0 : -1;
}

static void regular_files_below_are_listed_sorted_with_sha256(void **state)
{
    (void)state;
    char p[512];
    put("weights.safetensors", "abc");
    snprintf(p, sizeof p, "%s/checkpoint-1", root);
    assert_int_equal(mkdir(p, 0700), 0);
    put("checkpoint-1/state.bin", "");
    snprintf(p, sizeof p, "%s/fifo", root);
    assert_int_equal(mkfifo(p, 0600), 0); /* never opened for reading (would block) */
    tq_artifact *v = NULL;
    size_t n = 0;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_artifacts_scan(root, &v, &n, &eb), TQ_OK);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].name, "checkpoint-1/state.bin");
    assert_int_equal(v[0].size_bytes, 0);
    assert_string_equal(v[0].sha256,
                        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_string_equal(v[1].name, "weights.safetensors");
    assert_int_equal(v[1].size_bytes, 3);
    assert_string_equal(v[1].sha256,
                        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    free(v);
}

static void symbolic_links_are_never_followed(void **state)
{
    (void)state;
    char p[512], t[512];
    put("real", "x");
    snprintf(p, sizeof p, "%s/link-to-file", root);
    assert_int_equal(symlink("/etc/passwd", p), 0);
    snprintf(p, sizeof p, "%s/link-to-dir", root);
    assert_int_equal(symlink("/etc", p), 0);
    snprintf(t, sizeof t, "%s/real", root);
    snprintf(p, sizeof p, "%s/link-inside", root);
    assert_int_equal(symlink(t, p), 0);
    tq_artifact *v = NULL;
    size_t n = 0;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_artifacts_scan(root, &v, &n, &eb), TQ_OK);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].name, "real");
    free(v);
    /* the outputs directory itself as a link: refused as a whole */
    snprintf(p, sizeof p, "%s/link-to-dir", root);
    assert_int_equal(tq_artifacts_scan(p, &v, &n, &eb), TQ_ERR_INVALID);
    assert_int_equal(n, 0);
}

static void at_most_the_bounded_number_of_files_and_a_missing_dir_is_none(void **state)
{
    (void)state;
    char name[64];
    for (int i = 0; i < TQ_ARTIFACTS_MAX + 20; i++) {
        snprintf(name, sizeof name, "f%03d", i);
        put(name, "x");
    }
    tq_artifact *v = NULL;
    size_t n = 0;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_artifacts_scan(root, &v, &n, &eb), TQ_OK);
    assert_int_equal(n, TQ_ARTIFACTS_MAX);
    free(v);
    char p[512];
    snprintf(p, sizeof p, "%s/none", root);
    assert_int_equal(tq_artifacts_scan(p, &v, &n, &eb), TQ_OK);
    assert_int_equal(n, 0);
    assert_null(v);
}

static void names_that_cannot_be_stored_are_left_out(void **state)
{
    (void)state;
    put("bad\xff", "x");
    put("tab\there", "x");
    put("ok", "x");
    tq_artifact *v = NULL;
    size_t n = 0;
    tq_errbuf eb = {{0}};
    assert_int_equal(tq_artifacts_scan(root, &v, &n, &eb), TQ_OK);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].name, "ok");
    free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(regular_files_below_are_listed_sorted_with_sha256, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(symbolic_links_are_never_followed, setup, teardown),
        cmocka_unit_test_setup_teardown(
            at_most_the_bounded_number_of_files_and_a_missing_dir_is_none, setup, teardown),
        cmocka_unit_test_setup_teardown(names_that_cannot_be_stored_are_left_out, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
