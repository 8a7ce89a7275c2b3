"""Per-image captions of a style's training images, and the training prompt each image gets.

When `train.prompt` has `{caption}`, an image's caption is the text of the file beside it with the same
stem (images/NAME.txt, the usual DreamBooth convention); an image without one gets the template with an
empty caption, its leading and trailing spaces and commas dropped ("{caption} in style_{style}" ->
"in style_00"). A caption that is not UTF-8, or a prompt longer than the tokenizer's length (it would be
cut silently), is a one-line error. Jittor-free, so the launcher can check captions before any worker
starts (docs/training.md).
"""
from pathlib import Path

from common.style_files import training_images


def image_prompts(files, template: str, style: str, too_long=None) -> list:
    """The training prompt of each image file: `template` with {style} and, if it has one, {caption} filled
    in; `too_long(prompt)` (the tokenizer's) says whether a prompt would be truncated."""
    prompts = []
    for path in files:
        caption = ""
        if "{caption}" in template:
            caption_file = Path(path).with_suffix(".txt")
            if caption_file.is_file():
                try:
                    caption = caption_file.read_bytes().decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise ValueError(f"{caption_file}: the caption is not UTF-8 text; save it as UTF-8") from None
        prompt = template.format(style=style, caption=caption)
        prompt = prompt if caption else prompt.strip(" ,")
        if too_long is not None and too_long(prompt):
            raise ValueError(f"{path}: its training prompt {prompt[:40]!r}... is longer than the tokenizer's "
                             "length and would be cut; shorten the caption")
        prompts.append(prompt)
    return prompts


def tokenizer_too_long(tokenizer):
    """`too_long` for `image_prompts` from a common.sd.tokenizer.CLIPTokenizer: truncation would drop tokens."""
    return lambda prompt: bool(tokenizer.tokenizer.encode(prompt).overflowing)


def check_captions(config, style) -> None:
    """A launch check (a stage's `style_checks`, Jittor-free): the style's training prompts can be made,
    every caption UTF-8 and within the tokenizer's length; a DatasetError naming the file otherwise."""
    if "{caption}" not in config.train.prompt:
        return
    from common.dataset import DatasetError
    from common.sd.model_folder import resolve_model_folder
    from common.sd.tokenizer import CLIPTokenizer
    try:
        tokenizer = CLIPTokenizer.from_folder(resolve_model_folder(config.model.path) / "tokenizer")
        image_prompts(training_images(style.dir), config.train.prompt, style.name, tokenizer_too_long(tokenizer))
    except (ValueError, FileNotFoundError) as e:
        raise DatasetError(str(e)) from None
