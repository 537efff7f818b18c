"""trellis_fuzz_target: one fuzz target as its two Bazel targets (see BUILD)."""

def trellis_fuzz_target(name, deps):
    """`<name>_fuzz` (cc_binary) and `<name>_corpus_test` (cc_test) from `<name>_fuzz.cc`.

    The binary links libFuzzer's main() under --config=fuzz and the replay driver
    (fuzz_driver_main.cc) otherwise; the test always replays corpus/<name>/.
    """
    corpus = native.glob(["corpus/%s/**" % name])
    native.cc_binary(
        name = name + "_fuzz",
        srcs = [name + "_fuzz.cc"] + select({
            "//tests/fuzz:libfuzzer": [],
            "//conditions:default": ["fuzz_driver_main.cc"],
        }),
        # So that `bazel run ... -- tests/fuzz/corpus/<name>` also works from the runfiles tree.
        data = corpus,
        linkopts = select({
            "//tests/fuzz:libfuzzer": ["-fsanitize=fuzzer"],
            "//conditions:default": [],
        }),
        deps = deps,
    )
    native.cc_test(
        name = name + "_corpus_test",
        size = "small",
        srcs = [
            "fuzz_driver_main.cc",
            name + "_fuzz.cc",
        ],
        args = ["tests/fuzz/corpus/" + name],
        data = corpus,
        # Under --config=fuzz Bazel links with clang (not clang++), which leaves out UBSan's C++
        # runtime unless -fsanitize=fuzzer brings it in; ask for it explicitly.
        linkopts = select({
            "//tests/fuzz:libfuzzer": ["-fsanitize-link-c++-runtime"],
            "//conditions:default": [],
        }),
        deps = deps,
    )
