"""The GGUF exact engine: compiled kernels against their torch twins, and the invariances that make
files decode anywhere (thread count, batch, full pass against incremental, AVX2 against plain C)."""

import numpy as np
import pytest
import torch

import llmzip
from conftest import make_gguf_llama
from llmzip.engine import gguf_llama
from llmzip.engine.gguf_llama import ExactGGUFLlamaEngine, GGUFLlama, QuantisedMatrix, _Products
from llmzip.errors import ModelError

pytestmark = pytest.mark.skipif(not gguf_llama.kernels_available(), reason="compiled kernels not built")

SEQUENCES = [np.array(s) for s in ([5, 90, 17, 200, 3, 3, 3, 41, 9], [7], list(range(40, 110)), [263] * 30)]


@pytest.fixture(scope="module", params=["Q4_1", "Q8_0", "Q4_0"])
def model_file(request, tmp_path_factory):
    return str(make_gguf_llama(tmp_path_factory.mktemp("gguf") / f"m.{request.param}.gguf",
                               matrix_type=request.param, seed=hash(request.param) % 1000))


@pytest.fixture(scope="module", params=gguf_llama.VERSIONS)
def version(request):
    return request.param


def engine(path, **options):
    return ExactGGUFLlamaEngine(GGUFLlama(path), start_token=0, **options)


@pytest.fixture(scope="module")
def make_engine(version):
    """Builds engines of the version under test."""
    return lambda path, **options: engine(path, version=version, **options)


@pytest.fixture(scope="module")
def compiled_rows(model_file, make_engine):
    return make_engine(model_file, threads=1).sequence_weights(SEQUENCES)


def test_rows_are_integer_distributions(compiled_rows):
    for rows, tokens in zip(compiled_rows, SEQUENCES):
        # float64 from the compiled kernels, the form the coder takes: integers all the same
        assert rows.shape == (len(tokens), 264) and rows.dtype == np.float64
        assert (rows == np.floor(rows)).all() and (rows >= 0).all() and (rows.sum(axis=1) == 2**30).all()


def test_compiled_kernels_equal_the_torch_reference(model_file, make_engine, compiled_rows):
    reference = make_engine(model_file, reference=True).sequence_weights(SEQUENCES)
    for compiled, expected in zip(compiled_rows, reference):
        assert np.array_equal(compiled, expected)


def test_plain_c_equals_avx2(model_file, make_engine, compiled_rows):
    plain = make_engine(model_file, threads=2, plain=True).sequence_weights(SEQUENCES)
    for rows, expected in zip(plain, compiled_rows):
        assert np.array_equal(rows, expected)


def test_thread_counts_agree(model_file, make_engine, compiled_rows):
    for rows, expected in zip(make_engine(model_file, threads=3).sequence_weights(SEQUENCES), compiled_rows):
        assert np.array_equal(rows, expected)


def test_incremental_equals_full_pass_and_batch_neighbours_do_not_matter(model_file, make_engine, compiled_rows):
    exact = make_engine(model_file, threads=2)
    longest = max(len(tokens) for tokens in SEQUENCES)
    session = exact.start(len(SEQUENCES))
    feed = np.zeros(len(SEQUENCES), dtype=np.int64)
    for step in range(longest):
        rows = session.advance(feed)
        for index, tokens in enumerate(SEQUENCES):
            if step < len(tokens):
                assert np.array_equal(rows[index], compiled_rows[index][step])
                feed[index] = tokens[step]
            else:
                feed[index] = 0
    alone = exact.start(1)  # batch 1, no neighbours
    for step, token in enumerate([0] + list(SEQUENCES[0][:-1])):
        assert np.array_equal(alone.advance(np.array([token]))[0], compiled_rows[0][step])


def random_matrix(rng, rows, inputs, kind):
    import gguf

    weight = (rng.standard_normal((rows, inputs)) * rng.choice([1e-4, 0.02, 3.0])).astype(np.float32)
    weight[rng.random(weight.shape) < 0.01] *= 50  # outliers widen the scales' exponent span
    raw = gguf.quants.quantize(weight, getattr(gguf.GGMLQuantizationType, kind))
    return QuantisedMatrix.from_gguf(kind, raw, rows, inputs), weight


def extreme_rows(rng, rows, inputs):
    """int16 rows with whole rows and single blocks at the ends of the range, and small blocks."""
    x = torch.from_numpy(rng.integers(-32767, 32768, (rows, inputs)).astype(np.int16))
    x[0] = 32767
    x[1] = -32767
    x[2] = 0
    x[3, :32] = -32768
    x[4] = torch.from_numpy(rng.integers(-3, 4, inputs).astype(np.int16))  # multipliers of 1
    x[5, 32:64] = 127 * 258 + 1  # the largest multiplier
    x[6, :32] = torch.arange(-16, 16, dtype=torch.int16) * 2047
    return x


def test_int16_rows_equal_reference_on_edge_rows():
    """Requantising to int16 (AVX2 eight at a time, plain C) gives the reference's integers: peaks at
    every bit length, ties of the rounding, the most negative values, rows of zeros, odd widths."""
    rng = np.random.default_rng(11)
    rows = []
    for bits in range(0, 62):
        peak = 1 << bits
        rows.append(rng.integers(-peak, peak + 1, 40))
        rows.append(np.array([peak, -peak, peak - 1, -(peak - 1), peak // 2, -(peak // 2)] * 6 + [0] * 4))
        rows.append((rng.integers(-64, 65, 40) << max(0, bits - 6)) + (1 << max(0, bits - 7)) * (bits > 7))
    rows.append(np.zeros(40, dtype=np.int64))
    x = torch.from_numpy(np.stack(rows).astype(np.int64))
    for width in (40, 37, 8, 3):  # whole vectors, a tail, one vector, a tail alone
        part = x[:, :width].contiguous()
        expected = _Products(False, 1).int16_rows(part, 5)
        for plain in (False, True):
            out, exponent = _Products(True, 1, plain).int16_rows(part, 5)
            assert torch.equal(out, expected[0]) and torch.equal(exponent, expected[1])


@pytest.mark.parametrize("int8_inputs", [False, True])
@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0", "Q4_0"])
def test_product_kernel_equals_reference_on_extreme_inputs(kind, int8_inputs):
    rng = np.random.default_rng(7)
    matrix, _ = random_matrix(rng, 24, 96, kind)
    matrix.output_shift = rng.integers(-20, 30, 24).astype(np.int32)
    matrix.limits = np.full(24, 2**40, dtype=np.int64)
    x = extreme_rows(rng, 9, 96)
    exponent = torch.from_numpy(rng.integers(-30, 10, 9).astype(np.int32))
    expected = _Products(False, 1, int8_inputs=int8_inputs).linear(matrix, x, exponent)
    for plain in (False, True):
        for threads in (1, 2):
            assert torch.equal(_Products(True, threads, plain, int8_inputs).linear(matrix, x, exponent), expected)
    for tokens in range(1, 10):  # every tile width of the kernel, and 9 tokens as two tiles
        assert torch.equal(_Products(True, 1, False, int8_inputs).linear(matrix, x[:tokens], exponent[:tokens]),
                           expected[:tokens])
    x17, exponent17 = torch.cat([x, x[:8]]), torch.cat([exponent, exponent[:8]])  # three tiles: 5 + 6 + 6
    assert torch.equal(_Products(True, 2, False, int8_inputs).linear(matrix, x17, exponent17),
                       torch.cat([expected, expected[:8]]))
    accumulated = torch.full_like(expected, 5)
    _Products(True, 2, int8_inputs=int8_inputs).linear(matrix, x, exponent, accumulate_into=accumulated)
    assert torch.equal(accumulated, expected + 5)


def test_int8_blocks_round_each_block_to_a_multiple_of_its_multiplier():
    """Version 2's input rounding: c * q with |q| <= 127, c = min(ceil(peak / 127), 258), nearest (half up)."""
    rng = np.random.default_rng(11)
    x = extreme_rows(rng, 12, 128)
    rounded = gguf_llama._int8_blocks(x).view(12, 4, 32)
    blocks = x.to(torch.int64).view(12, 4, 32)
    c = ((blocks.abs().amax(-1, keepdim=True) + 126) // 127).clamp(max=258)
    q = rounded // c.clamp(min=1)
    assert torch.equal(q * c, rounded) and int(q.abs().max()) <= 127 and int(rounded.abs().max()) <= 32767
    assert bool(((2 * (rounded - blocks)).abs() <= c).all())  # nearest multiple of c
    ties = ((2 * (blocks - rounded)).abs() == c) & (c > 0)
    assert bool(ties.any()) and bool(((rounded - blocks)[ties] > 0).all())  # ties round up
    assert torch.equal(rounded[2], torch.zeros_like(rounded[2]))
    assert torch.equal(rounded[4], blocks[4])  # multipliers of 1 keep small blocks as they are


@pytest.mark.parametrize("kind", ["Q4_1", "Q8_0"])
def test_matrix_integers_are_the_files_weights(kind):
    """Scales as integers times a power of two per row reproduce the dequantised weights exactly."""
    import gguf

    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((16, 64)) * 0.05).astype(np.float32)
    raw = gguf.quants.quantize(weight, getattr(gguf.GGMLQuantizationType, kind))
    matrix = QuantisedMatrix.from_gguf(kind, raw, 16, 64)
    dequantised = gguf.quants.dequantize(raw, getattr(gguf.GGMLQuantizationType, kind)).astype(np.float64)
    assert np.array_equal(matrix.real(), dequantised.reshape(16, 64))


def test_norm_rows_and_swiglu_kernels_equal_their_twins(gguf_llama):
    exact = engine(gguf_llama, threads=1)
    reference = _Products(compiled=False, threads=1)
    rng = np.random.default_rng(11)
    residual = torch.from_numpy(rng.integers(-2**40, 2**40, (6, 64)))
    residual[0] = 0
    residual[1, :] = 1
    block = exact.blocks[0]
    for products in (exact.products, _Products(True, 1, plain=True)):
        for got, expected in zip(products.rms_norm(residual, block.norm1), reference.rms_norm(residual, block.norm1)):
            assert torch.equal(got, expected)
        wide = torch.from_numpy(rng.integers(-2**50, 2**50, (5, 128)))
        for got, expected in zip(products.int16_rows(wide, -7), reference.int16_rows(wide, -7)):
            assert torch.equal(got, expected)
        gate_up = torch.from_numpy(rng.integers(-2**24, 2**24, (4, 256)))
        for got, expected in zip(products.swiglu(gate_up, exact.tables, block.gate_exponent, -40),
                                 reference.swiglu(gate_up, exact.tables, block.gate_exponent, -40)):
            assert torch.equal(got, expected)
        qk = torch.from_numpy(rng.integers(-2**18, 2**18, (6, 96)))
        cos, sin = exact.rotary_tables(16)
        expected = qk.clone()
        reference.rotate(expected, 16, 4, 16, 3, 5, cos, sin)
        got = qk.clone()
        products.rotate(got, 16, 4, 16, 3, 5, cos, sin)
        assert torch.equal(got, expected)


def test_round_trip_through_the_api(gguf_llama):
    data = ("the theater is in the south; " * 30).encode() + "红楼梦 \xff".encode("utf-8", "surrogateescape")
    for options in ({}, {"chunk_tokens": 20, "batch_size": 3}):
        packed = llmzip.compress(data, model=gguf_llama, xz_fallback=False, **options)
        info = llmzip.info(packed)
        assert info.chunks["model"] >= 1 and info.model_settings["engine"]["architecture"] == "llama-gguf"
        assert llmzip.decompress(packed, model=gguf_llama) == data


def test_identity_is_the_content_not_the_name(gguf_llama, tmp_path):
    copy = tmp_path / "renamed.gguf"
    copy.write_bytes(open(gguf_llama, "rb").read())
    data = b"the other theater, the south. " * 10
    packed = llmzip.compress(data, model=gguf_llama, xz_fallback=False)
    assert llmzip.decompress(packed, model=str(copy)) == data


@pytest.mark.parametrize("damage", ["truncated", "header", "metadata"])
def test_damaged_gguf_is_refused_clearly(gguf_llama, tmp_path, damage):
    content = bytearray(open(gguf_llama, "rb").read())
    if damage == "truncated":
        content = content[: len(content) * 2 // 3]
    elif damage == "header":
        content[:4] = b"GGUX"
    else:
        content[30:60] = b"\xff" * 30
    path = tmp_path / "damaged.gguf"
    path.write_bytes(bytes(content))
    with pytest.raises(ModelError):
        model = llmzip.models.load_model(str(path))
        model.engine()


def test_decoder_cuts_a_group_to_the_cache_budget(gguf_llama, monkeypatch):
    """A coded group of 8 chunks decodes in lockstep batches no larger than the budget allows."""
    from llmzip import stream

    data = b"the theater is in the south; the other one is not. " * 12
    packed = llmzip.compress(data, model=gguf_llama, xz_fallback=False, chunk_tokens=12, batch_size=8)
    engine = llmzip.models.load_model(gguf_llama).engine()
    monkeypatch.setattr(stream, "LOCKSTEP_CACHE_BYTES", 3 * engine.cache_bytes(12))
    batches = []
    start = type(engine).start
    monkeypatch.setattr(type(engine), "start",
                        lambda self, batch_size: batches.append(batch_size) or start(self, batch_size))
    assert llmzip.decompress(packed, model=gguf_llama) == data
    assert max(batches) <= 3 < sum(batches)  # without the cut, a group of 8 would decode at once


def test_engine_versions_differ_only_where_inputs_are_rounded(model_file):
    """Version 2 rounds the inputs of 4-bit products: other rows than version 1 there, the same rows
    for a model of Q8_0 matrices; `with_version` shares the weights and gives the version's rows."""
    first, second = (engine(model_file, threads=1, version=v) for v in (1, 2))
    rows = [e.sequence_weights(SEQUENCES[:1])[0] for e in (first, second)]
    assert np.array_equal(rows[0], rows[1]) == model_file.endswith(".Q8_0.gguf")
    assert first.settings == {**second.settings, "version": 1}
    switched = second.with_version(1)
    assert switched.settings == first.settings and switched.blocks is second.blocks
    assert np.array_equal(switched.sequence_weights(SEQUENCES[:1])[0], rows[0])
    assert np.array_equal(second.sequence_weights(SEQUENCES[:1])[0], rows[1])


def test_attention_of_the_default_models_shape_equals_its_twins(tmp_path):
    """Three query heads per key-value head and heads of 64 (SmolLM2-135M's attention), over
    sequences of every parity and longer than the kernel's runs of 30 keys: the AVX2 kernel, plain C
    and the torch reference give the same rows, in a full pass and step by step."""
    path = str(make_gguf_llama(tmp_path / "wide.gguf", dim=384, heads=6, kv_heads=2, hidden=128, layers=1,
                               context_length=160, seed=7))
    sequences = [np.arange(11, 11 + n) % 264 for n in (1, 30, 31, 61, 150)]
    compiled = engine(path, threads=2).sequence_weights(sequences)
    for expected, rows in zip(compiled, engine(path, threads=1, plain=True).sequence_weights(sequences)):
        assert np.array_equal(rows, expected)
    for expected, rows in zip(compiled, engine(path, reference=True).sequence_weights(sequences)):
        assert np.array_equal(rows, expected)
    session = engine(path, threads=2).start(len(sequences))
    feed = np.zeros(len(sequences), dtype=np.int64)
    for step in range(150):
        rows = session.advance(feed)
        for index, tokens in enumerate(sequences):
            if step < len(tokens):
                assert np.array_equal(rows[index], compiled[index][step])
        feed = np.array([tokens[step] if step < len(tokens) else 0 for tokens in sequences])


def _attention_case(rng, *, query_bound, key_bound, value_exponents, multiplier, shift, Tq, Tk, lowest_value=-32767,
                    B=2, H=2, group=3, D=64):
    """Random inputs of the attention kernel; the weight table falls from 2**16 to 0."""
    capacity = Tk + 5
    table = (65536 * np.exp(-np.arange(300) / 24)).astype(np.int64)
    table[-20:] = 0
    return dict(
        q=rng.integers(-query_bound, query_bound + 1, size=(B, H, group * Tq, D), dtype=np.int64),
        keys=rng.integers(-key_bound, key_bound + 1, size=(B, H, capacity, D), dtype=np.int16),
        key_exponent=rng.integers(0, 3, size=(B, H, capacity), dtype=np.int32),
        values=rng.integers(lowest_value, 32768, size=(B, H, capacity, D), dtype=np.int16),
        value_exponent=rng.choice(value_exponents, size=(B, H, capacity)).astype(np.int32),
        multiplier=np.full(H, multiplier, dtype=np.int64), shift=np.full(H, shift, dtype=np.int64), table=table,
        shape=(B, H, group * Tq, Tq, Tk, capacity, D))


def _attend(case, threads, plain):
    out = np.zeros(case["q"].shape, dtype=np.int64)
    gguf_llama._quantized.attention(case["q"], case["keys"], case["key_exponent"], case["values"],
                                    case["value_exponent"], case["multiplier"], case["shift"], case["table"], out,
                                    *case["shape"], len(case["table"]), threads, int(plain))
    return out


@pytest.mark.skipif(not gguf_llama._quantized.has_avx2(), reason="no AVX2 path on this CPU")
@pytest.mark.parametrize("kind", ["model", "wide queries", "large weights", "wide multiplier", "rounding ties"])
@pytest.mark.parametrize("Tq, Tk", [(37, 37), (1, 70), (3, 9)])
def test_attention_kernel_avx2_equals_plain_c(kind, Tq, Tk):
    """The AVX2 attention (integer scores, vector softmax, integer value sums) gives plain C's
    integers on every path: queries within 2**19 and beyond (float64 scores), weights beyond 2**22
    once scaled (float64 sums: their large values would overflow the int32 lanes), multipliers
    beyond 32 bits (scalar logits), and logits that land on rounding ties (multiplier 1, small
    shift)."""
    rng = np.random.default_rng([Tq, Tk, *kind.encode()])
    cases = {"model": dict(query_bound=2**19, key_bound=2**15 - 1, value_exponents=[0, 1, 2, 5], multiplier=3001,
                           shift=44),
             "wide queries": dict(query_bound=2**20, key_bound=2**15 - 1, value_exponents=[0, 3], multiplier=1499,
                                  shift=44),
             "large weights": dict(query_bound=2**12, key_bound=2**15 - 1, value_exponents=[0, 4, 9], multiplier=3001,
                                   shift=44, lowest_value=30000),
             "wide multiplier": dict(query_bound=2**10, key_bound=2**10, value_exponents=[0, 2], multiplier=2**33 + 7,
                                     shift=52),
             "rounding ties": dict(query_bound=8, key_bound=8, value_exponents=[0, 1, 6], multiplier=1, shift=4)}
    case = _attention_case(rng, Tq=Tq, Tk=Tk, **cases[kind])
    expected = _attend(case, threads=1, plain=True)
    assert np.count_nonzero(expected) > expected.size // 2
    assert np.array_equal(_attend(case, threads=1, plain=False), expected)
    assert np.array_equal(_attend(case, threads=2, plain=False), expected)
