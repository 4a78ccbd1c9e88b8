"""What the model libraries say about their networks: default layers and layouts (timm,
Hugging Face, torchvision), and the torchvision networks the command line builds."""
