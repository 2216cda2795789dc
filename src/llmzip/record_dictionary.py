"""The preset dictionary for deflating model records (format version 2).

A model record is about 760 bytes of JSON; deflated alone it costs about 430 bytes, which a
short input feels. Deflated against this dictionary, a record of a built-in level costs about
20 bytes, and any other record still gains from the shared keys. The bytes below are part of
the format: files written with them can only be read with them, so they never change.
"""

RECORD_DICTIONARY = (
    b'{"batch_size":16,"chunk_tokens":255,"coder":{"library":"constriction","library_version":"0.5","name"'
    b':"range","precision":24,"quantisation":"categorical-fast"},"engine":{"activation_limit":32767,"atten'
    b'tion_exp_bits":16,"gain_bits":15,"kind":"exact","logit_fraction_bits":10,"norm_fraction_bits":10,"no'
    b'rm_input_bits":20,"norm_output_limit":32000,"output_exp_bits":24,"residual_bits":20,"row_total_bits"'
    b':30,"start_token":0,"version":1,"weight_limit":127},"model":{"fingerprint":"5557420688735b16440147e7'
    b'03c2955b8bf25ad2982f55f0b86b466a069323a5","name":"llmzip-tiny","parameters":639456,"source":"builtin'
    b'"},"start_token":0,"vocab_size":4096}{"batch_size":16,"chunk_tokens":1023,"coder":{"library":"constr'
    b'iction","library_version":"0.5","name":"range","precision":24,"quantisation":"categorical-fast"},"en'
    b'gine":{"architecture":"llama-gguf","attention_exp_bits":16,"gain_bits":24,"gate_up_limit":16777216,"'
    b'input_bits":15,"kind":"exact","logit_fraction_bits":10,"norm_fraction_bits":10,"norm_input_bits":20,'
    b'"output_exp_bits":24,"qk_limit":262144,"residual_bits":21,"rope_bits":24,"row_total_bits":30,"sigmoi'
    b'd":[10,16,16],"start_token":1,"value_limit":1048576,"version":1},"model":{"fingerprint":"b179c9523d0'
    b'e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53","name":"smollm2","origin":{"package":"llm-smo'
    b'llm2","version":"0.1.2"},"parameters":134515008,"source":"gguf"},"start_token":1,"vocab_size":49152}'
)
