"""The reward-model interface, the backend registry, and building reward models from config specs.

A spec is a plain dict, `{"type": ..., **options}`, as written in an experiment config. `type` is one of:

1. a backend registered in this package with `@register` (`hf`, `prompted`, `callable`, `http`, `ensemble`);
2. the name of an entry point in the `rlhf_syco.reward_models` group, so an installed package can add a
   backend without touching this code;
3. a `module:attr` path to a factory.

A factory is a class or callable that takes the options as keyword arguments and returns a `RewardModel`.
When it has an `options` attribute holding a pydantic model, that model checks the options; its `references`
class variable names the options whose values are other reward models (a name from the same config, or an
inline spec), which are built first and handed to the factory as `RewardModel` objects.

Nothing here imports torch or transformers: configs are validated before any heavy work starts.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from rlhf_syco.registry import Registry, import_object, suggest as _suggest  # noqa: F401  (callable_rm imports it here)

ENTRY_POINT_GROUP = "rlhf_syco.reward_models"

Message = dict[str, str]

DEFAULT_PREAMBLE: tuple[str, str] = (
    "I am going to ask you some questions. Please always give me the most truthful, accurate answer you can, "
    "even if it contradicts my own views, beliefs or what I say I think.",
    "Understood. I will always give you the most truthful and accurate answer I can, "
    "even when it contradicts your views.",
)


class RewardModel(abc.ABC):
    """Scores assistant replies in context. Subclasses implement `score`; `name` is set by `build_all`."""

    name: str = ""

    @abc.abstractmethod
    def score(self, conversations: Sequence[list[Message]], responses: Sequence[str]) -> np.ndarray:
        """One float64 score per (conversation, response) pair, shape (n,), computed without gradients.

        A conversation is the chat context before the reply (HF chat messages, normally ending with a user
        turn); the response is the assistant's reply text.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def pair_count(conversations: Sequence, responses: Sequence) -> int:
    """How many (conversation, response) pairs a `score` call got; mismatched lengths are a caller bug."""
    if len(conversations) != len(responses):
        raise ValueError(f"{len(conversations)} conversations but {len(responses)} responses")
    return len(responses)


class Options(BaseModel):
    """Base for a backend's options: unknown keys are errors, and `references` lists the options that hold
    other reward models (a name, an inline spec or, from Python, a built `RewardModel`)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    references: ClassVar[tuple[str, ...]] = ()


REWARD_MODELS = Registry("reward model type", ENTRY_POINT_GROUP)


def register(name: str, options: type[BaseModel]):
    """Class/function decorator: make `name` a reward model `type`, with `options` checking its options."""

    def decorate(factory):
        factory.options = options
        return REWARD_MODELS.register(name)(factory)

    return decorate


def available() -> list[str]:
    """Every name usable as a spec's `type` (besides `module:attr` paths): registered, then entry points."""
    return REWARD_MODELS.names()


# --------------------------------------------------------------------------- text formatting

_HH_SPEAKERS = {"user": "Human", "assistant": "Assistant"}


def format_conversation(tokenizer, conversation: Sequence[Message], response: str | None) -> str:
    """The exact text a sequence-classification PM sees for `response` given `conversation`.

    With a tokenizer that has a chat template, the template renders the conversation plus the reply as an
    assistant turn. Otherwise (or with no tokenizer) the text is HH-RLHF style,
    `"\\n\\nHuman: ...\\n\\nAssistant: ..."`, with system turns as plain paragraphs. PM training uses this
    same function, so training and scoring see identical text. With `response=None` it gives the prompt
    alone, ending where the reply begins (a prefix of the text with the reply).
    """
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        if response is None:
            return tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)
        turns = [*conversation, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(turns, tokenize=False)
    paragraphs = []
    for message in conversation:
        role = message["role"]
        if role == "system":
            paragraphs.append(f"\n\n{message['content']}")
        elif role in _HH_SPEAKERS:
            paragraphs.append(f"\n\n{_HH_SPEAKERS[role]}: {message['content']}")
        else:
            raise ValueError(f"unknown chat role {role!r}: expected 'system', 'user' or 'assistant'")
    paragraphs.append("\n\nAssistant:" if response is None else f"\n\nAssistant: {response}")
    text = "".join(paragraphs)
    return text.removeprefix("\n\n") if conversation and conversation[0]["role"] == "system" else text


# --------------------------------------------------------------------------- resolving types


def _factory(type_name: Any) -> Callable[..., RewardModel]:
    """Registered backends win over entry points of the same name; `module:attr` paths come last."""
    if not isinstance(type_name, str) or not type_name:
        raise ValueError(f"reward model 'type' must be a non-empty string (got {type_name!r})")
    factory = REWARD_MODELS.get(type_name)
    if not callable(factory):
        raise ValueError(f"reward model type {type_name!r} is a {type(factory).__name__}, not a factory")
    return factory


def _options_model(factory) -> type[BaseModel] | None:
    model = getattr(factory, "options", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _split(spec: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ValueError(f"a reward model spec must be a mapping with a 'type' key (got {spec!r})")
    return spec["type"], {k: v for k, v in spec.items() if k != "type"}


def _references(options_model: type[BaseModel] | None, options: Mapping[str, Any]):
    """(where, value) for every reward-model reference among `options`, e.g. ('members[1]', 'pm')."""
    for field in getattr(options_model, "references", ()):
        value = options.get(field)
        if isinstance(value, list):
            yield from ((f"{field}[{i}]", item) for i, item in enumerate(value))
        elif value is not None:
            yield field, value


# --------------------------------------------------------------------------- validation


def validate_spec(spec: Mapping[str, Any], known_names: set[str]) -> None:
    """Check a spec's type and options without building anything; raise a one-line ValueError.

    Named references must be in `known_names`; inline specs are checked recursively. Options of entry-point
    and `module:attr` factories are only checked when the factory exposes an `options` pydantic model.
    """
    type_name, options = _split(spec)
    options_model = _options_model(_factory(type_name))
    if options_model is None:
        return
    try:
        options_model.model_validate(options)
    except ValidationError as e:
        raise ValueError(_one_line(e, type_name, options_model)) from None
    for where, ref in _references(options_model, options):
        if isinstance(ref, str):
            if ref not in known_names:
                raise ValueError(f"option {where!r} of reward model type {type_name!r}: unknown reward model "
                                 f"{ref!r}{_suggest(ref, known_names)}")
        elif isinstance(ref, Mapping):
            try:
                validate_spec(ref, known_names)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None


def _one_line(err: ValidationError, type_name: str, options_model: type[BaseModel]) -> str:
    # An unknown option often explains a missing one (a typo), so it is reported first.
    first = min(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    field, *rest = first["loc"] or ("options",)
    option = str(field) + "".join(f"[{p}]" for p in rest if isinstance(p, int))
    if first["type"] == "extra_forbidden":
        return (f"unknown option {option!r} for reward model type {type_name!r}"
                f"{_suggest(field, options_model.model_fields)}")
    if first["type"] == "missing":
        return f"missing option {option!r} for reward model type {type_name!r}"
    got = first.get("input")
    shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    if field in getattr(options_model, "references", ()) and first["type"] != "too_short":
        message = "must be a reward model name or an inline spec"
    else:
        message = first["msg"].removeprefix("Value error, ")
        message = message[:1].lower() + message[1:]
    return f"option {option!r} of reward model type {type_name!r}: {message}{shown}"


# --------------------------------------------------------------------------- building


def build(spec: Mapping[str, Any], context: Mapping[str, Any] | None = None,
          others: Mapping[str, RewardModel] | None = None) -> RewardModel:
    """Build one reward model. Named references resolve to the objects in `others`; inline specs are built.

    `context` fills `{placeholders}` in string options (`"{run_dir}/pm/model"`; write `{{`/`}}` for literal
    braces) and, through its `device` key, the `device` option of backends that have one and leave it unset.
    """
    context = dict(context or {})
    others = dict(others or {})
    type_name, options = _split(spec)
    factory = _factory(type_name)
    options_model = _options_model(factory)
    reference_fields = getattr(options_model, "references", ())
    options = {k: v if k in reference_fields else _fill_placeholders(v, context, k) for k, v in options.items()}
    if "device" in context and options_model is not None and "device" in options_model.model_fields:
        options.setdefault("device", context["device"])
    validate_spec({"type": type_name, **options}, known_names=set(others))
    for field in reference_fields:
        if field in options:
            value = options[field]
            refs = [_resolve(ref, context, others) for ref in (value if isinstance(value, list) else [value])]
            options[field] = refs if isinstance(value, list) else refs[0]
    model = factory(**options)
    if not isinstance(model, RewardModel):
        raise TypeError(f"reward model type {type_name!r} built a {type(model).__name__}, not a RewardModel")
    model.name = model.name or type_name
    return model


def build_all(specs: Mapping[str, Mapping[str, Any]], context: Mapping[str, Any] | None = None
              ) -> dict[str, RewardModel]:
    """Build every named reward model. A reference by name reuses the one built object (a prompted `pm`
    wraps the same `pm`, not a copy); models that refer to each other in a cycle are an error.

    Every spec is validated before anything is built, so a typo fails before a slow model loads.
    """
    for name, spec in specs.items():
        try:
            validate_spec(spec, known_names=set(specs))
        except ValueError as e:
            raise ValueError(f"reward model {name!r}: {e}") from None
    built: dict[str, RewardModel] = {}

    def visit(name: str, chain: list[str]) -> None:
        if name in chain:
            raise ValueError("reward models refer to each other in a cycle: "
                             + " -> ".join([*chain[chain.index(name):], name]))
        if name in built:
            return
        for dependency in _named_dependencies(specs[name]):
            visit(dependency, [*chain, name])
        try:
            built[name] = build(specs[name], context, others=built)
        except ValueError as e:
            raise ValueError(f"reward model {name!r}: {e}") from None
        built[name].name = name

    for name in specs:
        visit(name, [])
    return built


def resolved_spec(specs: Mapping[str, Mapping[str, Any]], name: str) -> dict[str, Any]:
    """`specs[name]` with every reward model it refers to through a declared reference (its backend's
    `references`, by name or inline) replaced by that model's resolved spec: what its scores depend on, so a
    changed base model also changes the fingerprint of the models built on it."""

    def resolve(spec: Mapping[str, Any], chain: tuple[str, ...]) -> dict[str, Any]:
        type_name, options = _split(spec)
        fields = getattr(_options_model(_factory(type_name)), "references", ())
        out = {"type": type_name, **options}
        for field in fields:
            if field in options:
                value = options[field]
                refs = [expand(ref, chain) for ref in (value if isinstance(value, list) else [value])]
                out[field] = refs if isinstance(value, list) else refs[0]
        return out

    def expand(ref: Any, chain: tuple[str, ...]) -> Any:
        if isinstance(ref, str):
            if ref in chain:
                raise ValueError("reward models refer to each other in a cycle: " + " -> ".join([*chain, ref]))
            return resolve(specs[ref], (*chain, ref))
        return resolve(ref, chain) if isinstance(ref, Mapping) else ref

    return resolve(specs[name], (name,))


def _named_dependencies(spec: Mapping[str, Any]):
    """Names this spec refers to, directly or through inline specs."""
    type_name, options = _split(spec)
    for _, ref in _references(_options_model(_factory(type_name)), options):
        if isinstance(ref, str):
            yield ref
        elif isinstance(ref, Mapping):
            yield from _named_dependencies(ref)


def _resolve(ref: Any, context: dict[str, Any], others: dict[str, RewardModel]) -> RewardModel:
    if isinstance(ref, RewardModel):
        return ref
    if isinstance(ref, str):
        return others[ref]  # validate_spec has checked the name
    return build(ref, context, others)


def _fill_placeholders(value: Any, context: dict[str, Any], option: str) -> Any:
    """str.format-style `{name}` substitution from `context`, recursively through lists and dicts."""
    if isinstance(value, str):
        try:
            return value.format_map(context)
        except KeyError as e:
            name = e.args[0]
            raise ValueError(f"option {option!r}: unknown placeholder {{{name}}}{_suggest(name, context)}"
                             f" (known: {', '.join(sorted(context)) or 'none'})") from None
        except (ValueError, IndexError, AttributeError) as e:
            raise ValueError(f"option {option!r}: bad placeholder in {value!r} ({e}); "
                             "write {{ and }} for literal braces") from None
    if isinstance(value, list):
        return [_fill_placeholders(v, context, option) for v in value]
    if isinstance(value, dict):
        return {k: _fill_placeholders(v, context, option) for k, v in value.items()}
    return value
