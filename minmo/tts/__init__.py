"""Text-to-speech backends behind one interface: text, voice, style -> waveform + sample rate."""
