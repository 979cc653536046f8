from charlit.machine import FAST_PATH_FLAGS, cpu_summary, describe_cpu, native_bf16

SAPPHIRE_RAPIDS = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8
"""
EPYC = "model name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx avx2 fma\n"
MILAN_UNNAMED = "cpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu avx2 fma\n"
GENOA_UNNAMED = "cpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: fpu avx2 fma\n"


def test_cpu_summary_reads_the_model_and_the_fast_path_flags():
    intel = cpu_summary(SAPPHIRE_RAPIDS)
    assert intel["model"] == "Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz"
    assert intel["flags"] == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"]
    amd = cpu_summary(EPYC)
    assert amd["flags"] == ["avx2", "fma"] and "avx512bw" not in FAST_PATH_FLAGS
    assert describe_cpu(amd) == f"AMD EPYC 7B13, {amd['cores']} cores, avx2 fma"
    assert cpu_summary("")["flags"] == [] and cpu_summary()["cores"] >= 1


def test_cpu_summary_tells_processors_apart_that_report_the_same_name():
    milan, genoa = cpu_summary(MILAN_UNNAMED), cpu_summary(GENOA_UNNAMED)
    assert milan["model"] == genoa["model"] == "AMD EPYC" and (milan["cpuid"], genoa["cpuid"]) == ("25.1.1", "25.17.1")
    assert describe_cpu(milan) == f"AMD EPYC (cpuid 25.1.1), {milan['cores']} cores, avx2 fma"
    assert cpu_summary(EPYC)["cpuid"] == ""


def test_native_bf16_needs_amx_or_avx512_bf16():
    assert native_bf16(cpu_summary(SAPPHIRE_RAPIDS)) and not native_bf16(cpu_summary(EPYC))
    assert native_bf16({"flags": ["avx512f", "avx512_bf16"]}) and not native_bf16({"flags": ["avx512f"]})
