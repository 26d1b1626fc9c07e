"""Test doubles shared by test files that need no model: a tokenizer of one token per character."""


class CharTokenizer:
    """One token per character (its code mod 256), and a chat template that is just the messages'
    contents: tools go into the system prompt."""

    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, **kwargs):
        return [ord(c) % 256 for m in messages for c in m["content"]]

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 256 for c in text]
