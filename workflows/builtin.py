"""The built-in workflows; importing this module registers them."""
from latentlm.workflows.ask import Ask
from latentlm.workflows.caption import Caption
from latentlm.workflows.describe_and_speak import DescribeAndSpeak
from latentlm.workflows.ground import Ground
from latentlm.workflows.text_to_image import TextToImage
from latentlm.workflows.text_to_speech import TextToSpeech

BUILTIN = (TextToImage, Caption, Ask, Ground, TextToSpeech, DescribeAndSpeak)
