"""The built-in workflows; importing this module registers them."""
from latentlm.workflows.ask import Ask
from latentlm.workflows.caption import Caption
from latentlm.workflows.ground import Ground
from latentlm.workflows.text_to_image import TextToImage

BUILTIN = (TextToImage, Caption, Ask, Ground)
